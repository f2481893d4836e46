import Foundation
import KithProfile
import KithStore
import Synchronization

/// The one writer of a node: requests hand it their deltas, it commits whatever has queued up in
/// one write transaction (group commit), and answers each request once the transaction is durable.
///
/// One fsync then covers many requests, so durable ingest stays fast under concurrency; each
/// request's messages still land all together or not at all (a failed transaction fails every
/// request in it, and none of their messages is applied).
final class GroupCommitter: @unchecked Sendable {
    typealias Completion = @Sendable (Result<Committed, Error>) -> Void

    /// What a durable commit gives each request in it.
    struct Committed {
        /// One outcome per delta of the request, in order.
        var outcomes: [ApplyOutcome]
        /// This node's own change sequence after the commit (its writes included), or nil when
        /// it could not be read: session tokens and write concerns wait for it. Read once per
        /// commit, not once per request.
        var ownSequence: UInt64?
    }

    private struct Job {
        var deltas: [ProfileDelta]
        var completion: Completion
    }

    private let store: any ProfileStore
    /// This node's origin: the component of the version vector its own changes advance.
    private let origin: UInt64
    private let maximumMessagesPerCommit: Int
    private let queue = Mutex<(jobs: [Job], stopped: Bool)>(([], false))
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    /// Messages committed and transactions run, for metrics.
    let committedMessages = Atomic<Int>(0)
    let commits = Atomic<Int>(0)

    /// Called on the writer thread after each commit (replication pushes the new changes).
    let onCommit: @Sendable () -> Void

    init(store: any ProfileStore, origin: UInt64, maximumMessagesPerCommit: Int = 10_000, onCommit: @escaping @Sendable () -> Void = {}) {
        self.onCommit = onCommit
        self.store = store
        self.origin = origin
        self.maximumMessagesPerCommit = maximumMessagesPerCommit
        let thread = Thread { [self] in run() }
        thread.name = "kith-writer"
        thread.start()
    }

    /// Queues `deltas`; `completion` runs on the writer thread once they are durable (or failed).
    func submit(_ deltas: [ProfileDelta], completion: @escaping Completion) {
        let accepted = queue.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.jobs.append(Job(deltas: deltas, completion: completion))
            return true
        }
        if accepted { wakeup.signal() } else { completion(.failure(NodeError.shuttingDown)) }
    }

    /// Jobs waiting to be committed (for load shedding).
    var backlog: Int { queue.withLock { $0.jobs.count } }

    /// Finishes what is queued, then stops the writer thread.
    func stop() {
        queue.withLock { $0.stopped = true }
        wakeup.signal()
        finished.wait()
    }

    private func run() {
        while true {
            wakeup.wait()
            while let group = takeGroup() { commit(group) }
            if queue.withLock({ $0.stopped && $0.jobs.isEmpty }) {
                finished.signal()
                return
            }
        }
    }

    private func takeGroup() -> [Job]? {
        queue.withLock { state -> [Job]? in
            guard !state.jobs.isEmpty else { return nil }
            var taken: [Job] = []
            var messages = 0
            while let job = state.jobs.first, taken.isEmpty || messages + job.deltas.count <= maximumMessagesPerCommit {
                taken.append(state.jobs.removeFirst())
                messages += job.deltas.count
            }
            return taken
        }
    }

    private func commit(_ group: [Job]) {
        do {
            let outcomes = try store.apply(group.flatMap(\.deltas))
            committedMessages.wrappingAdd(outcomes.count, ordering: .relaxed)
            commits.wrappingAdd(1, ordering: .relaxed)
            let ownSequence = try? store.versionVector()[origin]
            var offset = 0
            for job in group {
                job.completion(.success(Committed(outcomes: Array(outcomes[offset..<offset + job.deltas.count]), ownSequence: ownSequence)))
                offset += job.deltas.count
            }
            onCommit()
        } catch {
            for job in group { job.completion(.failure(error)) }
        }
    }
}

enum NodeError: Error, CustomStringConvertible {
    case shuttingDown
    var description: String { "the node is shutting down" }
}
