import KithCRDT

/// An undirected link between two identifiers, stored with the smaller one first.
public struct LinkEdge: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let low: Identifier
    public let high: Identifier

    public init?(_ a: Identifier, _ b: Identifier) {
        guard a != b else { return nil }
        low = min(a, b)
        high = max(a, b)
    }

    public func other(than identifier: Identifier) -> Identifier { identifier == low ? high : low }

    public static func < (a: LinkEdge, b: LinkEdge) -> Bool { (a.low, a.high) < (b.low, b.high) }

    public var description: String { "\(low)~\(high)" }
}

/// The state of one link: every add (its stamp and the touchpoint that asserted it) and the
/// latest removal.
///
/// Conflict rule ("add-wins, remove by time"): the link is active when its newest add is not older
/// than its latest removal — an add and a removal with equal stamps resolve to the add. A removal
/// (unmerge) therefore cancels every assertion made before it, including old copies that arrive
/// late from an offline edge site, while genuinely new evidence re-links. This deviates from a
/// pure observed-remove set on purpose: an OR-Set would let a late, unobserved old assertion glue
/// two people together again after an operator split them.
///
/// The adds are a grow-only map (stamp → source), not a pair of min/max registers, because erasure
/// must remove exactly the adds it dominates and still leave the same state on every replica,
/// whatever order filter and merge run in; with only min/max kept, that is impossible.
public struct LinkState: CRDT {
    public private(set) var adds: [LWWStamp: String]
    public private(set) var removedAt: LWWStamp?

    public init(adds: [LWWStamp: String] = [:], removedAt: LWWStamp? = nil) {
        self.adds = adds
        self.removedAt = removedAt
    }

    public var isActive: Bool {
        guard let newest = adds.keys.max() else { return false }
        return removedAt.map { newest >= $0 } ?? true
    }

    /// The earliest assertion: links are evaluated against identity rules in this order.
    public var firstAdd: LWWStamp? { adds.keys.min() }

    public mutating func merge(_ other: LinkState) {
        for (stamp, source) in other.adds where adds[stamp].map({ $0 < source }) ?? true { adds[stamp] = source }
        if let removal = other.removedAt, removedAt.map({ $0 < removal }) ?? true { removedAt = removal }
    }

    /// Erasure: drops adds dated at or before `time`, and a removal that only those adds could
    /// have been subject to. Nil when nothing of the link survives.
    func forgetting(upTo time: Int64) -> LinkState? {
        let kept = adds.filter { $0.key.time > time }
        let removal = removedAt.flatMap { $0.time > time ? $0 : nil }
        if kept.isEmpty && removal == nil { return nil }
        return LinkState(adds: kept, removedAt: removal)
    }
}

/// The replicated set of links (a map of link states): a CRDT joined edge by edge.
public typealias IdentityGraph = CRDTMap<LinkEdge, LinkState>

/// Turns a set of identifiers and their active links into people, obeying the identity rules.
///
/// Links are taken one at a time in one total order (earliest assertion first, then the edge), and
/// a link is accepted only if the rules do not refuse joining the two groups it connects
/// (`IdentityRules.refusal`: no blocked member, every kind within its limit). Every replica with the same links therefore computes the same people, whatever order the
/// links arrived in. A shared in-store tablet's anonymous id, say, joins the first customer who
/// used it and is refused for the next, instead of gluing customers together.
public struct IdentityResolver: Sendable {
    public var rules: IdentityRules

    public init(rules: IdentityRules) {
        self.rules = rules
    }

    /// Groups `nodes` into people. `links` are the active links among them with their order keys.
    public func people(nodes: [Identifier], links: [(edge: LinkEdge, order: LWWStamp)]) -> [[Identifier]] {
        let sortedNodes = nodes.sorted()
        var index: [Identifier: Int] = [:]
        for (i, node) in sortedNodes.enumerated() { index[node] = i }
        var parent = Array(sortedNodes.indices)
        // An identifier's time, for limits with a window: its earliest link's first assertion.
        var firstLinked: [Identifier: Int64] = [:]
        if !rules.windows.isEmpty {
            for link in links {
                for end in [link.edge.low, link.edge.high] { firstLinked[end] = min(firstLinked[end] ?? .max, link.order.time) }
            }
        }
        var tallies = sortedNodes.map { node in IdentifierTally([node], rules: rules) { firstLinked[$0] ?? .max } }

        func root(_ i: Int) -> Int {
            var i = i
            while parent[i] != i {
                parent[i] = parent[parent[i]]
                i = parent[i]
            }
            return i
        }

        for link in links.sorted(by: { ($0.order, $0.edge) < ($1.order, $1.edge) }) {
            guard let a = index[link.edge.low], let b = index[link.edge.high] else { continue }
            let ra = root(a), rb = root(b)
            if ra == rb { continue }
            guard rules.refusal(joining: tallies[ra], with: tallies[rb]) == nil else { continue }
            let (keep, drop) = ra < rb ? (ra, rb) : (rb, ra)
            parent[drop] = keep
            tallies[keep].add(tallies[drop])
        }

        var groups: [Int: [Identifier]] = [:]
        for (i, node) in sortedNodes.enumerated() { groups[root(i), default: []].append(node) }
        return groups.values.sorted { $0[0] < $1[0] }
    }
}
