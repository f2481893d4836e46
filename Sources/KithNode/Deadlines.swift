import Foundation
import Synchronization

/// Runs short closures at their deadlines, on a thread of its own. A waiter's deadline must not
/// depend on a shared pool (Dispatch's global queues) that blocked work elsewhere in the process
/// can exhaust: the closures only answer a caller, never block.
final class Deadlines: Sendable {
    private struct Entry {
        var at: UInt64
        var order: UInt64
        var body: @Sendable () -> Void
    }

    private let state = Mutex<(entries: [Entry], order: UInt64, stopped: Bool)>(([], 0, false))
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)

    init(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    /// Runs `body` `millis` from now, once. Refused (false: never run) once `stop` has begun.
    @discardableResult
    func after(millis: Int, _ body: @escaping @Sendable () -> Void) -> Bool {
        let at = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, millis)) * 1_000_000
        let added = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.order += 1
            let entry = Entry(at: at, order: state.order, body: body)
            let position = state.entries.firstIndex { ($0.at, $0.order) > (at, entry.order) } ?? state.entries.count
            state.entries.insert(entry, at: position)
            return true
        }
        if added { wakeup.signal() }
        return added
    }

    /// Stops taking closures, runs each one queued at its deadline (every waiter is answered,
    /// none early: the callers' deadlines are seconds at most), then stops the thread.
    /// `early`: runs them all now instead (their waiters were answered already).
    func stop(early: Bool = false) {
        state.withLock { state in
            state.stopped = true
            if early { for index in state.entries.indices { state.entries[index].at = 0 } }
        }
        wakeup.signal()
        finished.wait()
    }

    private func run() {
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            let (due, next, stopped) = state.withLock { state in
                let count = state.entries.firstIndex { $0.at > now } ?? state.entries.count
                defer { state.entries.removeFirst(count) }
                return (Array(state.entries.prefix(count)), state.entries.dropFirst(count).first?.at, state.stopped)
            }
            for entry in due { entry.body() }
            if stopped && next == nil {
                finished.signal()
                return
            }
            _ = wakeup.wait(timeout: next.map { DispatchTime(uptimeNanoseconds: $0) } ?? .distantFuture)
        }
    }
}
