/// A grow-only counter (Shapiro et al. 2011, §3.1.1): one monotonic count per replica, the value
/// is their sum, the join is the per-replica maximum.
public struct GCounter: CRDT {
    public private(set) var counts: [UInt64: UInt64]

    public init(counts: [UInt64: UInt64] = [:]) {
        self.counts = counts.filter { $0.value > 0 }
    }

    public var value: UInt64 { counts.values.reduce(0, &+) }

    /// Adds `amount` on behalf of `replica`; returns the delta (that replica's new count).
    @discardableResult
    public mutating func increment(replica: UInt64, by amount: UInt64 = 1) -> GCounter {
        guard amount > 0 else { return GCounter() }
        let next = counts[replica, default: 0] &+ amount
        counts[replica] = next
        return GCounter(counts: [replica: next])
    }

    public mutating func merge(_ other: GCounter) {
        for (replica, count) in other.counts where count > counts[replica, default: 0] {
            counts[replica] = count
        }
    }
}

/// A counter that goes up and down (Shapiro et al. 2011, §3.1.2): two grow-only counters.
public struct PNCounter: CRDT {
    public private(set) var increments: GCounter
    public private(set) var decrements: GCounter

    public init(increments: GCounter = GCounter(), decrements: GCounter = GCounter()) {
        self.increments = increments
        self.decrements = decrements
    }

    public var value: Int64 { Int64(bitPattern: increments.value &- decrements.value) }

    @discardableResult
    public mutating func add(replica: UInt64, _ amount: Int64) -> PNCounter {
        if amount >= 0 {
            return PNCounter(increments: increments.increment(replica: replica, by: UInt64(amount)))
        }
        return PNCounter(decrements: decrements.increment(replica: replica, by: amount.magnitude))
    }

    public mutating func merge(_ other: PNCounter) {
        increments.merge(other.increments)
        decrements.merge(other.decrements)
    }
}
