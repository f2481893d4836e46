import KithCRDT

/// One consent category's state: the customer's latest decision.
///
/// Conflict rule: the later decision (by the customer's decision time) wins. Decisions made at the
/// same time are concurrent, and then *denied* wins: when Kith cannot tell what the customer
/// wanted last, it assumes the more restrictive answer. Remaining ties (same time, same decision)
/// fall to the stamp's tie-break and then the source, so the join is a total order's maximum.
/// A category with no register is *unknown* — never collected — which is not the same as denied;
/// the policy decides what unknown means for each purpose.
public struct ConsentRegister: CRDT {
    public private(set) var granted: Bool
    public private(set) var stamp: LWWStamp
    public private(set) var source: String

    public init(granted: Bool, stamp: LWWStamp, source: String) {
        self.granted = granted
        self.stamp = stamp
        self.source = source
    }

    public mutating func merge(_ other: ConsentRegister) {
        if other.wins(over: self) { self = other }
    }

    private func wins(over other: ConsentRegister) -> Bool {
        if stamp.time != other.stamp.time { return stamp.time > other.stamp.time }
        if granted != other.granted { return !granted }
        if stamp.tiebreak != other.stamp.tiebreak { return stamp.tiebreak > other.stamp.tiebreak }
        return source > other.source
    }
}
