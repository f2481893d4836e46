import KithCRDT
import KithProfile

/// The erasure times of the people an erasure forgets, and what each dominates: the decisions
/// of the erasure cascade about ledger rows and logged changes, made without the store, so that
/// they can be tested on their own (the write context reads the times and rows and carries the
/// decisions out).
struct ErasureCutoffs: Equatable {
    let times: [Identifier: Int64]
    /// Everything dated at or before this goes, whoever it is about: what a member quarantined
    /// after a forget compaction drops (`.min`: nothing).
    var floor: Int64 = .min

    /// The cutoff of `identifier`: its erasure time, or the floor if that is later.
    func cutoff(of identifier: Identifier) -> Int64? {
        guard floor != .min else { return times[identifier] }
        return max(times[identifier] ?? .min, floor)
    }

    /// Whether data about `identifier` dated `time` is erased: at or before its cutoff.
    func dominates(_ identifier: Identifier, at time: Int64) -> Bool {
        cutoff(of: identifier).map { time <= $0 } ?? false
    }

    /// A logged change as it may stay after the erasure, or nil when it must go: a message
    /// about an erased person, or an unlink touching one, dated at or before the cutoff. A
    /// message about someone else loses its links to erased people (dated by the message).
    /// Erasures stay: they are what keeps the data from coming back.
    func purged(_ entry: ChangeEntry) -> ChangeEntry? {
        var entry = entry
        switch entry.change {
        case .message(var delta):
            let time = delta.times.eventTime
            if dominates(delta.subject, at: time) { return nil }
            delta.links.removeAll { dominates($0, at: time) }
            entry.change = .message(delta)
        case .unlink(let edge, let stamp):
            if dominates(edge.low, at: stamp.time) || dominates(edge.high, at: stamp.time) { return nil }
        case .erasure, .setting: break
        }
        return entry
    }

    /// What becomes of one of an erased member's own ledger rows.
    enum LedgerFate: Equatable {
        case keep, drop
        case rewrite(LedgerRow)
    }

    /// A row of `member`'s ledger dated at or before its cutoff goes; a later row forgets the
    /// other copies the cutoff dominates (each copy asserted the row's links at its own time,
    /// and was accepted by a node then: both are erased).
    func fate(ofOwn row: LedgerRow, of member: Identifier) -> LedgerFate {
        guard let cutoff = cutoff(of: member) else { return .keep }
        if row.entry.time <= cutoff { return .drop }
        return row.forgettingCopies { $0 <= cutoff }.map { .rewrite($0) } ?? .keep
    }

    /// A neighbour's ledger row without its link to `member`, when the member's cutoff
    /// dominates the row; nil when the row stays as it is. An erased identifier must not
    /// survive in anyone's rows.
    func stripped(_ row: LedgerRow, of member: Identifier) -> LedgerRow? {
        guard dominates(member, at: row.entry.time), row.links.contains(member) else { return nil }
        var row = row
        row.links.removeAll { $0 == member }
        return row
    }
}

extension EdgeSummary {
    /// A link's summary rebuilt after an erasure from what survives `cutoff` (the later of its
    /// two ends' erasure times): the adds of every asserting copy dated after it, and the old
    /// removal if it is after it. The summary alone cannot say which adds an erasure dominates,
    /// so the adds come from the ledger rows that assert the link.
    static func rebuilt(adds: [LWWStamp], removal: LWWStamp?, cutoff: Int64) -> EdgeSummary {
        var summary = EdgeSummary()
        for add in adds where add.time > cutoff { summary.add(add) }
        if let removal, removal.time > cutoff { summary.remove(removal) }
        return summary
    }
}
