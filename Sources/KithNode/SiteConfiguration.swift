import KithCluster
import KithJSON
import KithProfile

extension NodeConfiguration {
    /// A scoped edge site (docs/replication.md, "Scope"): the purposes it serves and which
    /// customers it holds. A node with this set holds only those customers, projected for those
    /// purposes, and takes no member's raw log.
    public struct Site: Codable, Sendable, Equatable {
        /// Purposes of the policy the site serves: it holds each field as the most any of them
        /// may see it under the customer's consent, and a customer none of them may see not at all.
        public var purposes: [String]
        /// The customers it holds: those any clause holds (each clause has exactly one form).
        public var scope: [Clause]

        public struct Clause: Codable, Sendable, Equatable {
            /// `{"trait": "homeStore", "equals": "store-12"}`: the profile's trait has that
            /// (string) value.
            public var trait: String?
            public var equals: String?
            /// `{"seenWithinDays": 30}`: this site took a message about the customer within.
            public var seenWithinDays: Int?
            /// `{"identifiers": ["user_id:u-1"]}`: these customers (tests, migrations).
            public var identifiers: [String]?

            public init(trait: String? = nil, equals: String? = nil, seenWithinDays: Int? = nil, identifiers: [String]? = nil) {
                self.trait = trait
                self.equals = equals
                self.seenWithinDays = seenWithinDays
                self.identifiers = identifiers
            }
        }

        public init(purposes: [String], scope: [Clause]) {
            self.purposes = purposes
            self.scope = scope
        }

        /// The site's settings for replication; `seen` clauses name this node (`origin`).
        public func settings(origin: UInt64) throws -> SiteSettings {
            guard !purposes.isEmpty else { throw ConfigurationError("site.purposes must name at least one purpose of the policy") }
            guard !scope.isEmpty else { throw ConfigurationError("site.scope must have at least one clause") }
            let clauses = try scope.enumerated().map { index, clause throws -> Scope.Clause in
                let forms = [clause.trait != nil || clause.equals != nil, clause.seenWithinDays != nil, clause.identifiers != nil]
                guard forms.filter({ $0 }).count == 1 else {
                    throw ConfigurationError(
                        "site.scope[\(index)] must have exactly one of trait and equals, seenWithinDays, identifiers")
                }
                if let days = clause.seenWithinDays {
                    guard (1...3_650).contains(days) else { throw ConfigurationError("site.scope[\(index)].seenWithinDays must be 1 to 3650") }
                    return .seen(node: origin, withinMillis: Int64(days) * 86_400_000)
                }
                if let identifiers = clause.identifiers {
                    let parsed = try identifiers.map { text in
                        guard let identifier = Identifier(parsing: text) else {
                            throw ConfigurationError("site.scope[\(index)]: \"\(text)\" is not an identifier (kind:value)")
                        }
                        return identifier
                    }
                    return .identifiers(Set(parsed))
                }
                guard let trait = clause.trait, !trait.isEmpty, let value = clause.equals else {
                    throw ConfigurationError("site.scope[\(index)]: a trait clause needs both trait and equals")
                }
                return .trait(name: trait, value: .string(value))
            }
            return SiteSettings(scope: .only(clauses), purposes: purposes)
        }
    }
}
