/// A hybrid logical clock value (Kulkarni et al., "Logical Physical Clocks", 2014).
///
/// Ordered by wall time, then the logical counter, then the node id, so that two distinct
/// clocks never produce equal timestamps. Wall time is Unix milliseconds.
public struct HybridTimestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var wallMillis: Int64
    public var logical: UInt32
    public var node: UInt64

    public init(wallMillis: Int64, logical: UInt32 = 0, node: UInt64 = 0) {
        self.wallMillis = wallMillis
        self.logical = logical
        self.node = node
    }

    public static func < (a: HybridTimestamp, b: HybridTimestamp) -> Bool {
        (a.wallMillis, a.logical, a.node) < (b.wallMillis, b.logical, b.node)
    }

    public var description: String { "\(wallMillis).\(logical)@\(node)" }
}

/// The clock of one node. Physical time is passed in (pure core: no clock reads here).
///
/// `tick` stamps a local event; `observe` folds in a timestamp received from another node.
/// A remote timestamp further ahead of local physical time than `maximumForwardDriftMillis`
/// is refused (returns nil) rather than dragging this clock into the future: one peer with a
/// broken clock must not poison the cluster's timestamps.
public struct HybridLogicalClock: Sendable {
    public let node: UInt64
    public let maximumForwardDriftMillis: Int64
    public private(set) var last: HybridTimestamp

    public init(node: UInt64, maximumForwardDriftMillis: Int64 = 60_000, last: HybridTimestamp? = nil) {
        self.node = node
        self.maximumForwardDriftMillis = maximumForwardDriftMillis
        self.last = last ?? HybridTimestamp(wallMillis: 0, logical: 0, node: node)
    }

    /// A timestamp for a local event at physical time `physicalMillis`.
    public mutating func tick(physicalMillis: Int64) -> HybridTimestamp {
        if physicalMillis > last.wallMillis {
            last = HybridTimestamp(wallMillis: physicalMillis, logical: 0, node: node)
        } else {
            last = advanced(wall: last.wallMillis, logical: last.logical)
        }
        return last
    }

    /// Folds in `remote` (received at physical time `physicalMillis`) and returns the timestamp
    /// of the receive event, or nil when `remote` is too far in the future to be trusted.
    public mutating func observe(_ remote: HybridTimestamp, physicalMillis: Int64) -> HybridTimestamp? {
        if remote.wallMillis - physicalMillis > maximumForwardDriftMillis { return nil }
        let wall = max(last.wallMillis, remote.wallMillis, physicalMillis)
        let logical: UInt32
        if wall == last.wallMillis && wall == remote.wallMillis {
            logical = max(last.logical, remote.logical)
        } else if wall == last.wallMillis {
            logical = last.logical
        } else if wall == remote.wallMillis {
            logical = remote.logical
        } else {
            last = HybridTimestamp(wallMillis: wall, logical: 0, node: node)
            return last
        }
        last = advanced(wall: wall, logical: logical)
        return last
    }

    /// The successor of (wall, logical). The logical counter is 32 bits; if it would overflow
    /// (four billion events in one millisecond) the wall component moves on by one instead.
    private func advanced(wall: Int64, logical: UInt32) -> HybridTimestamp {
        if logical == UInt32.max { return HybridTimestamp(wallMillis: wall + 1, logical: 0, node: node) }
        return HybridTimestamp(wallMillis: wall, logical: logical + 1, node: node)
    }
}
