/// What orders writes to a last-writer-wins register: a time, then a tie-break string.
///
/// For data from a touchpoint message the time is the message's event time and the tie-break its
/// `messageId`, so the stamp is a function of the message alone: the same message applied on any
/// node, any number of times, gives the same stamp. Writes made by a node (an API call) use the
/// node's hybrid clock and a tie-break naming the node and a sequence number.
public struct LWWStamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var time: Int64
    public var tiebreak: String

    public init(time: Int64, tiebreak: String) {
        self.time = time
        self.tiebreak = tiebreak
    }

    public static func < (a: LWWStamp, b: LWWStamp) -> Bool {
        a.time != b.time ? a.time < b.time : a.tiebreak < b.tiebreak
    }

    public var description: String { "\(time)/\(tiebreak)" }
}

/// A last-writer-wins register (Shapiro et al., "A comprehensive study of CRDTs", 2011, §3.2.1).
///
/// Conflict rule: the write with the greater stamp wins. Two writes with equal stamps but
/// different values (only possible if a client reuses a messageId for different content) are
/// ordered by value, so the join stays a total, deterministic choice.
public struct LWWRegister<Value: Comparable & Sendable>: CRDT {
    public private(set) var value: Value
    public private(set) var stamp: LWWStamp

    public init(_ value: Value, stamp: LWWStamp) {
        self.value = value
        self.stamp = stamp
    }

    /// Writes `value` if `stamp` wins over the current one; returns whether it did.
    @discardableResult
    public mutating func assign(_ value: Value, stamp: LWWStamp) -> Bool {
        guard Self.wins(stamp, value, over: self.stamp, self.value) else { return false }
        self.value = value
        self.stamp = stamp
        return true
    }

    public mutating func merge(_ other: LWWRegister<Value>) {
        assign(other.value, stamp: other.stamp)
    }

    static func wins(_ stamp: LWWStamp, _ value: Value, over currentStamp: LWWStamp, _ currentValue: Value) -> Bool {
        if stamp != currentStamp { return stamp > currentStamp }
        return value > currentValue
    }
}
