import Foundation
import KithAPI
import KithCRDT
import KithProfile
import KithStore
import Synchronization

/// What group commit needs of a store (a protocol of its own, so tests can watch the order of
/// commits, syncs and answers).
protocol GroupCommitStore: Sendable {
    func apply(_ batch: [ProfileDelta]) throws -> [ApplyOutcome]
    func applyDeferringSync(_ batch: [ProfileDelta]) throws -> [ApplyOutcome]
    func synchronize() throws
    func versionVector() throws -> VersionVector
}

/// A profile store as group commit uses it.
struct ProfileStoreCommits: GroupCommitStore {
    let store: any ProfileWriting & ReplicaStore
    func apply(_ batch: [ProfileDelta]) throws -> [ApplyOutcome] { try store.apply(batch) }
    func applyDeferringSync(_ batch: [ProfileDelta]) throws -> [ApplyOutcome] { try store.applyDeferringSync(batch) }
    func synchronize() throws { try store.synchronize() }
    func versionVector() throws -> VersionVector { try store.versionVector() }
}

/// The one writer of a node: requests hand it their deltas, it commits whatever has queued up in
/// one write transaction (group commit), and answers each request once the transaction is durable.
/// Every other write of the node (erasure, unmerge, replicated changes, repairs) is a task run on
/// the same thread between groups, so that no write transaction starts anywhere else
/// (`ProfileStore.claimWriter`) and group-commit latency depends only on what this queue holds.
///
/// One fsync then covers many requests, so durable ingest stays fast under concurrency; each
/// request's messages still land all together or not at all (a failed transaction fails every
/// request in it, and none of their messages is applied).
///
/// With `defersSync` (a store opened with `allowsDeferredSync`), a commit syncs its data pages
/// but not its metadata page, and the writer goes on to the next group at once. A sync thread
/// makes the committed groups durable with one sync for all that are waiting, then answers them:
/// the writer no longer waits for the second of LMDB's two syncs per commit. A committed change
/// is readable before it is durable, and a peer must never copy a change its origin could lose
/// in an OS crash (its sequence number would be reused for another change after the restart):
/// replication reads only the log the store says is durable (`durableLogSequence`), and pushes
/// once a group is answered, after its sync.
final class GroupCommitter: NodeWriter, @unchecked Sendable {
    typealias Completion = @Sendable (Result<Committed, Error>) -> Void

    typealias Committed = WriteCommitted

    /// Messages of one request in a group.
    private struct Request {
        var deltas: [ProfileDelta]
        var completion: Completion
    }

    private let store: any GroupCommitStore
    /// This node's origin: the component of the version vector its own changes advance.
    private let origin: UInt64
    private let defersSync: Bool
    private let maximumMessagesPerCommit: Int
    private let queue = WriterQueue()
    private let finished = DispatchSemaphore(value: 0)
    /// Committed groups waiting for a sync (with `defersSync`), in commit order.
    private let unsynced = Mutex<(groups: [(requests: [Request], committed: [Committed])], stopped: Bool)>(([], false))
    private let syncWakeup = DispatchSemaphore(value: 0)
    private let syncFinished = DispatchSemaphore(value: 0)
    /// Messages committed and transactions run, for metrics.
    let committedMessageCount = Atomic<Int>(0)
    let commitCount = Atomic<Int>(0)

    /// Called after each group is answered (replication pushes the new changes).
    let onCommit: @Sendable () -> Void

    /// `claim` runs first on the writer thread (a store records its one writer there).
    init(
        store: any GroupCommitStore, origin: UInt64, defersSync: Bool = false, maximumMessagesPerCommit: Int = 10_000,
        claim: @escaping @Sendable () -> Void = {}, onCommit: @escaping @Sendable () -> Void = {}
    ) {
        self.onCommit = onCommit
        self.store = store
        self.origin = origin
        self.defersSync = defersSync
        self.maximumMessagesPerCommit = maximumMessagesPerCommit
        let thread = Thread { [self] in
            claim()
            run()
        }
        thread.name = "kith-writer"
        thread.start()
        if defersSync {
            let syncer = Thread { [self] in runSyncs() }
            syncer.name = "kith-sync"
            syncer.start()
        }
    }

    /// Queues `deltas`; `completion` runs once they are durable (or failed), on the writer thread
    /// or, with `defersSync`, on the sync thread.
    func submit(_ deltas: [ProfileDelta], completion: @escaping Completion) { queue.submit(deltas, completion: completion) }

    /// Runs `task` on the writer thread, after what is queued before it. A task that writes opens
    /// its own transaction; it is never batched with others. Returns false (without running it)
    /// once the writer is stopping.
    @discardableResult
    func perform(_ task: @escaping @Sendable () -> Void) -> Bool { queue.perform(task) }

    var commits: Int { commitCount.load(ordering: .relaxed) }
    var committedMessages: Int { committedMessageCount.load(ordering: .relaxed) }

    /// Jobs waiting to be committed (for load shedding).
    var backlog: Int { queue.backlog }

    /// Finishes what is queued (committed and synced), then stops the threads.
    func stop() {
        queue.stop()
        finished.wait()
        guard defersSync else { return }
        unsynced.withLock { $0.stopped = true }
        syncWakeup.signal()
        syncFinished.wait()
    }

    private func run() {
        while true {
            queue.wakeup.wait()
            while let next = takeNext() {
                guard case .group(let group) = next else {
                    if case .task(let task) = next { task() }
                    continue
                }
                switch commit(group) {
                case .success(let committed) where defersSync:
                    unsynced.withLock { $0.groups.append((group, committed)) }
                    syncWakeup.signal()
                case let result: answer(group, result)
                }
            }
            if queue.stoppedAndEmpty {
                finished.signal()
                return
            }
        }
    }

    /// The sync thread: one sync for every group committed since the last, then their answers.
    private func runSyncs() {
        while true {
            syncWakeup.wait()
            let (groups, stopped) = unsynced.withLock { state in
                defer { state.groups.removeAll() }
                return (state.groups, state.stopped)
            }
            if !groups.isEmpty {
                let synced = Result { try store.synchronize() }
                for group in groups { answer(group.requests, synced.map { group.committed }) }
            }
            if stopped {
                syncFinished.signal()
                return
            }
        }
    }

    private enum Next {
        case group([Request])
        case task(@Sendable () -> Void)
    }

    /// The next task, or the message requests queued before the next task, up to the limit.
    private func takeNext() -> Next? {
        queue.withJobs { jobs -> Next? in
            guard let first = jobs.first else { return nil }
            if case .task(let task) = first {
                jobs.removeFirst()
                return .task(task)
            }
            var taken: [Request] = []
            var messages = 0
            while case .messages(let deltas, let completion)? = jobs.first,
                taken.isEmpty || messages + deltas.count <= maximumMessagesPerCommit
            {
                jobs.removeFirst()
                taken.append(Request(deltas: deltas, completion: completion))
                messages += deltas.count
            }
            return .group(taken)
        }
    }

    /// Applies the group in one transaction: what each request gets, or why none of it applied.
    private func commit(_ group: [Request]) -> Result<[Committed], Error> {
        Result {
            let deltas = group.flatMap(\.deltas)
            let outcomes = try defersSync ? store.applyDeferringSync(deltas) : store.apply(deltas)
            committedMessageCount.wrappingAdd(outcomes.count, ordering: .relaxed)
            commitCount.wrappingAdd(1, ordering: .relaxed)
            let ownSequence = try? store.versionVector()[origin]  // nil: its waiters answer 503 (`Committed.ownSequence`)
            var offset = 0
            return group.map { job in
                defer { offset += job.deltas.count }
                return Committed(outcomes: Array(outcomes[offset..<offset + job.deltas.count]), ownSequence: ownSequence)
            }
        }
    }

    /// Answers every request of a group (durable now, or failed).
    private func answer(_ group: [Request], _ result: Result<[Committed], Error>) {
        switch result {
        case .success(let committed):
            for (job, done) in zip(group, committed) { job.completion(.success(done)) }
            onCommit()
        case .failure(let error):
            for job in group { job.completion(.failure(error)) }
        }
    }
}

/// A node's one writer, as the node drives it.
protocol NodeWriter: APIWriter {
    /// Finishes what is queued, durably and answered, then stops the writer's threads.
    func stop()
}

enum NodeError: Error, CustomStringConvertible {
    case shuttingDown
    var description: String { "the node is shutting down" }
}
