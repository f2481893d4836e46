import KithCRDT
import KithCrypto
import KithJSON

/// Which customers a member holds (docs/replication.md, "Scope"): a statement about identity
/// components, decided on a profile's view as the core holds it — never on single identifiers,
/// so a component in scope brings every identifier, link and document of it, and a merge or an
/// unmerge moves whole components in or out.
///
/// Pure: the same scope and the same views give the same answer on every node, so "who holds
/// what" is judged by the simulation like membership and anti-entropy. A scoped site sends its
/// scope with every site sync (`PeerMessage.siteSync`); the core decides with it
/// (`SiteHoldings`, `SiteSync`).
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

extension Scope: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case .everything: writer.write(byte: 0)
        case .only(let clauses):
            writer.write(byte: 1)
            writer.write(sequence: clauses) { writer, clause in clause.encode(to: &writer) }
        }
    }

    public init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        switch try reader.readByte() {
        case 0: self = .everything
        case 1: self = .only(try reader.readSequence { reader in try Clause(from: &reader) })
        default: throw BinaryDecodingError(.invalidValue, offset: offset, "scope")
        }
    }
}

extension Scope.Clause: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case .trait(let name, let value):
            writer.write(byte: 1)
            writer.write(string: name)
            value.encode(to: &writer)
        case .identifiers(let identifiers):
            writer.write(byte: 2)
            writer.write(sequence: identifiers.sorted()) { writer, identifier in identifier.encode(to: &writer) }
        case .placement(let range):
            writer.write(byte: 3)
            writer.write(varint: range.lowerBound)
            writer.write(varint: range.upperBound)
        case .seen(let node, let within):
            writer.write(byte: 4)
            writer.write(varint: node)
            writer.write(signed: within)
        }
    }

    public init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        switch try reader.readByte() {
        case 1: self = .trait(name: try reader.readString(), value: try JSONValue(from: &reader))
        case 2: self = .identifiers(Set(try reader.readSequence { reader in try Identifier(from: &reader) }))
        case 3:
            let lower = try reader.readVarint(), upper = try reader.readVarint()
            guard lower <= upper else { throw BinaryDecodingError(.invalidValue, offset: offset, "placement range") }
            self = .placement(lower...upper)
        case 4: self = .seen(node: try reader.readVarint(), withinMillis: try reader.readSigned())
        default: throw BinaryDecodingError(.invalidValue, offset: offset, "scope clause")
        }
    }
}
