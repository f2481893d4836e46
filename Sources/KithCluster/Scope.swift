import KithCrypto
import KithJSON
import KithProfile

/// Which customers a member holds (docs/replication.md, "Scope"): a statement about identity
/// components, decided on a profile's view as the core holds it — never on single identifiers,
/// so a component in scope brings every identifier, link and document of it, and a merge or an
/// unmerge moves whole components in or out.
///
/// Pure: the same scope and the same views give the same answer on every node, so "who holds
/// what" is judged by the simulation like membership and anti-entropy. The shells that carry
/// its decisions out (projected document states, scoped digest comparison, purges) come next;
/// until then every member holds everything (`everything`).
///
public enum Scope: Equatable, Sendable {
    /// Every customer: core nodes today.
    case everything
    /// The customers of components that at least one clause holds (none: nobody).
    case only([Clause])

    public enum Clause: Equatable, Sendable {
        /// Components whose profile has trait `name` equal to `value` (`homeStore` = "leeds-1").
        /// The profile's trait is the component's joined trait, so the clause follows the
        /// latest value whichever member's document carried it.
        case trait(name: String, value: JSONValue)
        /// Components with any of these identifiers as a member (tests, migrations).
        case identifiers(Set<Identifier>)
        /// Components whose canonical identifier's placement key (`Scope.placement(of:)`) falls
        /// in the range: what a partitioned core's node holds.
        case placement(ClosedRange<UInt64>)
        /// Components about which node `node` accepted a message from a client within the last
        /// `withinMillis` (a site's own customers: it took in their messages). Decided on the
        /// component's `SeenBy`, which every replica derives alike from the same rows.
        case seen(node: UInt64, withinMillis: Int64)
    }

    /// A component as a scope decides on it: its profile, and who accepted its messages when.
    public struct Component: Equatable, Sendable {
        public var view: ProfileView
        public var seenBy: SeenBy

        public init(view: ProfileView, seenBy: SeenBy = SeenBy()) {
            self.view = view
            self.seenBy = seenBy
        }
    }

    /// Whether a member with this scope holds `component` at `now` (a `seen` clause lapses as
    /// time passes, the same at the same `now` on every node).
    public func holds(_ component: Component, now: Int64) -> Bool {
        switch self {
        case .everything: true
        case .only(let clauses): clauses.contains { $0.holds(component, now: now) }
        }
    }

    /// Where an identifier is placed among a partitioned core's ranges: the first eight bytes of
    /// the SHA-256 of its key, so every node computes the same, and identifiers spread evenly
    /// whatever their values look like (sequential user ids, one email domain).
    public static func placement(of identifier: Identifier) -> UInt64 {
        Crypto.sha256(identifier.key).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }
}

extension Scope.Clause {
    func holds(_ component: Scope.Component, now: Int64) -> Bool {
        let view = component.view
        switch self {
        case .trait(let name, let value): return view.head.traits[name].map { $0.value.value == value } ?? false
        case .identifiers(let identifiers): return view.members.contains(where: identifiers.contains)
        case .placement(let range): return range.contains(Scope.placement(of: view.canonical))
        case .seen(let node, let within): return component.seenBy.seen(by: node, since: now - within)
        }
    }
}
