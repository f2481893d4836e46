import Synchronization

/// Callers waiting for the log to grow: long polls of the change feed (`feedWaiters`), and
/// reads waiting for the commit of acknowledged writes (`commitWaiters`). Each is completed
/// exactly once: by a commit that gives it something (it walks again and may wait again,
/// under the same id and timer), by its deadline, or when the node stops — whoever takes it
/// out of the table completes it. A generation counts commits, so that a commit between a walk
/// and its wait is never missed; a deadline that passes while a caller is walking is kept for
/// its next wait.
final class LogWaiters: Sendable {
    struct Waiter: Sendable {
        /// Runs once a registration ends: `expired` when the deadline passed or the node stops.
        var wake: @Sendable (_ expired: Bool, _ id: UInt64) -> Void
    }

    enum Registration: Equatable {
        /// Waiting under this id; `new`: the caller sets its timer.
        case waiting(UInt64, new: Bool)
        /// The log grew since the walk: walk again instead.
        case logAdvanced
        /// The deadline passed while the poll was walking, or the node is stopping: answer now.
        case over
    }

    private struct State {
        var waiters: [UInt64: Waiter] = [:]
        /// Polls woken by a commit and walking again.
        var walking: Set<UInt64> = []
        /// Walking polls whose deadline passed meanwhile.
        var expired: Set<UInt64> = []
        var next: UInt64 = 0
        var generation: UInt64 = 0
        var stopped = false
    }

    private let state = Mutex(State())

    /// Commits seen so far.
    var generation: UInt64 { state.withLock { $0.generation } }

    /// Long polls waiting or walking now.
    var count: Int { state.withLock { $0.waiters.count + $0.walking.count } }

    /// Waits `waiter` (under `id` when it waited before), unless the log grew since generation
    /// `seen`, its deadline passed, or the node is stopping.
    func wait(_ waiter: Waiter, id: UInt64?, unless seen: UInt64) -> Registration {
        state.withLock { state in
            if let id, state.expired.remove(id) != nil || state.stopped {
                state.walking.remove(id)
                return .over
            }
            if state.stopped { return .over }
            if state.generation != seen { return .logAdvanced }
            let assigned =
                id
                ?? {
                    state.next += 1
                    return state.next
                }()
            state.walking.remove(assigned)
            state.waiters[assigned] = waiter
            return .waiting(assigned, new: id == nil)
        }
    }

    /// A poll that walked again answered without waiting any more.
    func done(_ id: UInt64) {
        state.withLock { state in
            state.walking.remove(id)
            state.expired.remove(id)
        }
    }

    /// The log grew: every waiting poll walks again.
    func logAdvanced() {
        let woken = state.withLock { state in
            state.generation += 1
            defer { state.waiters.removeAll() }
            for id in state.waiters.keys { state.walking.insert(id) }
            return state.waiters
        }
        for (id, waiter) in woken { waiter.wake(false, id) }
    }

    /// `id`'s deadline passed: answered now if it waits, at its next wait if it is walking.
    func expire(_ id: UInt64) {
        let waiter = state.withLock { state -> Waiter? in
            if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
            if state.walking.contains(id) { state.expired.insert(id) }
            return nil
        }
        waiter?.wake(true, id)
    }

    /// The node stops: every waiting poll is answered now, and none waits from now on.
    func stop() {
        let woken = state.withLock { state in
            state.stopped = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for (id, waiter) in woken { waiter.wake(true, id) }
    }
}
