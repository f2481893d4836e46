import Dispatch
import KithAPI
import KithProfile
import Synchronization

/// The queue in front of a node's one writer (`GroupCommitter`, `LoggedWriter`): requests'
/// messages and tasks, in the order they came. Any thread adds; only the writer takes.
final class WriterQueue: Sendable {
    typealias Completion = @Sendable (Result<WriteCommitted, Error>) -> Void

    /// Queued work: messages to commit with others, or a task that opens its own transaction.
    enum Job: Sendable {
        case messages([ProfileDelta], Completion)
        case task(@Sendable () -> Void)
    }

    private let state = Mutex<(jobs: [Job], stopped: Bool)>(([], false))
    /// Signalled once for each job added, and at stop.
    let wakeup = DispatchSemaphore(value: 0)

    /// Queues `deltas`; `completion` gets the outcome (at once, failed, once the writer stops).
    func submit(_ deltas: [ProfileDelta], completion: @escaping Completion) {
        if add(.messages(deltas, completion)) == false { completion(.failure(NodeError.shuttingDown)) }
    }

    /// Queues `task`; false (without queueing it) once the writer is stopping.
    func perform(_ task: @escaping @Sendable () -> Void) -> Bool { add(.task(task)) }

    private func add(_ job: Job) -> Bool {
        let accepted = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.jobs.append(job)
            return true
        }
        if accepted { wakeup.signal() }
        return accepted
    }

    /// Jobs waiting (for load shedding).
    var backlog: Int { state.withLock { $0.jobs.count } }
    var stopped: Bool { state.withLock { $0.stopped } }
    var stoppedAndEmpty: Bool { state.withLock { $0.stopped && $0.jobs.isEmpty } }

    /// No job is added from now on; the writer finishes those queued.
    func stop() {
        state.withLock { $0.stopped = true }
        wakeup.signal()
    }

    func peek() -> Job? { state.withLock { $0.jobs.first } }

    func take() -> Job? { state.withLock { state in state.jobs.isEmpty ? nil : state.jobs.removeFirst() } }

    /// The queued jobs, to take several at once (the writer's alone).
    func withJobs<T>(_ body: (inout [Job]) -> T) -> T { state.withLock { body(&$0.jobs) } }
}
