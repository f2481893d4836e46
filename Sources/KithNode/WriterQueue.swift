import Dispatch
import KithAPI
import KithProfile

/// The queue in front of a node's one writer (`GroupCommitter`, `LoggedWriter`): requests'
/// messages and tasks, in the order they came. Any thread adds; only the writer takes.
final class WriterQueue: Sendable {
    typealias Completion = @Sendable (Result<WriteCommitted, Error>) -> Void

    /// Queued work: messages to commit with others, or a task that opens its own transaction.
    enum Job: Sendable {
        case messages([ProfileDelta], Completion)
        case task(@Sendable () -> Void)
    }

    private let queue = ClosableQueue<Job>()
    /// Signalled once for each job added, and at stop.
    var wakeup: DispatchSemaphore { queue.wakeup }

    /// Queues `deltas`; `completion` gets the outcome (at once, failed, once the writer stops).
    func submit(_ deltas: [ProfileDelta], completion: @escaping Completion) {
        if queue.add(.messages(deltas, completion)) == false { completion(.failure(NodeError.shuttingDown)) }
    }

    /// Queues `task`; false (without queueing it) once the writer is stopping.
    func perform(_ task: @escaping @Sendable () -> Void) -> Bool { queue.add(.task(task)) }

    /// Jobs waiting (for load shedding).
    var backlog: Int { queue.count }
    var stopped: Bool { queue.isClosed }
    var stoppedAndEmpty: Bool { queue.withItems { jobs, closed in closed && jobs.isEmpty } }

    /// No job is added from now on; the writer finishes those queued.
    func stop() { queue.close() }

    func peek() -> Job? { queue.withItems { jobs, _ in jobs.first } }

    func take() -> Job? { queue.withItems { jobs, _ in jobs.isEmpty ? nil : jobs.removeFirst() } }

    /// The queued jobs, to take several at once (the writer's alone).
    func withJobs<T>(_ body: (inout [Job]) -> T) -> T { queue.withItems { jobs, _ in body(&jobs) } }
}
