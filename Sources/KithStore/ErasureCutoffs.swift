import KithProfile

/// The erasure times of the people an erasure forgets, and what each dominates: the decisions
/// of the erasure cascade about logged changes, made without the store, so that they can be
/// tested on their own (the write context reads the times and carries the decisions out).
struct ErasureCutoffs: Equatable {
    let times: [Identifier: Int64]

    /// Whether data about `identifier` dated `time` is erased: at or before its cutoff.
    func dominates(_ identifier: Identifier, at time: Int64) -> Bool {
        times[identifier].map { time <= $0 } ?? false
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
        case .erasure: break
        }
        return entry
    }
}
