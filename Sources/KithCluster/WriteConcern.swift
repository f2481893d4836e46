/// How many replicas must hold a write before it is acknowledged (`?w=`; docs/consistency.md).
/// The replicas are this node and the core members it knows; edge sites, which may be away for
/// days, hold copies but are not counted.
public enum WriteConcern: String, Sendable, CaseIterable {
    /// Durable on the receiving node (the default).
    case one = "1"
    /// Durable on a majority of the replicas.
    case quorum
    /// Durable on every replica.
    case all

    /// How many of `replicas` must hold the write.
    public func required(replicas: Int) -> Int {
        switch self {
        case .one: 1
        case .quorum: replicas / 2 + 1
        case .all: replicas
        }
    }
}

extension ClusterNode {
    /// The replicas a write counts toward: this node and every core member it knows (alive or not).
    public var replicaIDs: Set<UInt64> {
        Set(membership.members.values.filter { $0.role == .core }.map(\.id)).union([id])
    }

    /// How many replicas a level counts against: the core members known, this node included, or
    /// the configured count when that is larger (a node that has just started knows few peers).
    public func replicaCount(configured: Int?) -> Int {
        max(configured ?? 0, replicaIDs.count)
    }

    /// How many replicas hold this node's own change `originSequence` durably, this node included.
    public func replicasHolding(ownChange originSequence: UInt64) -> Int {
        peersHolding(ownChange: originSequence).intersection(replicaIDs).count + 1
    }
}
