import Dispatch
import Foundation
import KithAPI
import KithProfile
import KithStore
import KithStoreLMDB
import Synchronization

/// The one writer of a node with a write-ahead log (docs/storage.md, "The write-ahead log").
///
/// Each request's messages are applied in an LMDB transaction that stays open while more
/// arrive (`WriteLogBatching` says when it ends), then appended to the log as one record; a sync
/// thread syncs the log once for every record waiting and answers their requests. The
/// transaction commits later, with LMDB's normal sync, recording the last record it holds; only
/// then can the log drop those records. A crash loses no acknowledged request: the node applies
/// the records after the store's recorded point before it serves (`Node`).
///
/// Applying before appending gives each request its exact place in the change log before it is
/// acknowledged: the session token a write returns names the change this node will commit (a
/// replay after a crash applies the same records in the same order from the same state, so it
/// gets the same sequence numbers). A read that comes after an acknowledgement waits for the
/// commit that makes the write visible (`acknowledgedLogSequence`, NodeAPI).
///
/// Every other write of the node (erasures, replicated changes, repairs) is a task run on the
/// same thread between transactions, as with `GroupCommitter`.
final class LoggedWriter: NodeWriter, @unchecked Sendable {
    typealias Completion = WriterQueue.Completion

    /// A request taken into the open transaction.
    private struct Request {
        var deltas: [ProfileDelta]
        var completion: Completion
        /// The local log sequence after its messages, once applied.
        var logSequence: UInt64?
    }

    private let store: any ProfileWriting & ReplicaStore
    private let log: WriteAheadLog
    private let batching: WriteLogBatching
    private let queue = WriterQueue()
    private let finished = DispatchSemaphore(value: 0)
    /// What the sync thread has to do: answers waiting for the log's sync; a commit whose log
    /// entries replication may read once their records are synced (`committedThrough`, nil:
    /// none since the last round); and, after a rotation, the store's sync, then the segments
    /// before `removeBefore` can go.
    private struct SyncWork {
        var answers: [(Completion, WriteCommitted)] = []
        var syncing = false
        var committedThrough: UInt64? = nil
        var removeBefore: UInt64? = nil
        var stopped = false
    }
    private let unsynced = Mutex(SyncWork())
    /// Requests appended to the log but not yet written to its file, and their messages (the
    /// writer's alone).
    private var unwritten: [(Completion, WriteCommitted)] = []
    private var unwrittenMessages = 0
    private let syncWakeup = DispatchSemaphore(value: 0)
    private let syncFinished = DispatchSemaphore(value: 0)
    private let acknowledged = Atomic<UInt64>(0)
    private let committed = Atomic<UInt64>(0)
    let committedMessageCount = Atomic<Int>(0)
    let commitCount = Atomic<Int>(0)
    let logSyncCount = Atomic<Int>(0)
    /// Called once a transaction's commit is durable (replication pushes, the feed walks).
    let onCommit: @Sendable () -> Void
    /// Called right after a transaction commits: reads waiting for it look again.
    let onVisible: @Sendable () -> Void
    /// Whether anyone waits for a commit now (`WriteLogBatching`): asked before each request.
    let watched: @Sendable () -> Bool

    init(
        store: any ProfileWriting & ReplicaStore, log: WriteAheadLog, batching: WriteLogBatching = WriteLogBatching(),
        claim: @escaping @Sendable () -> Void = {}, watched: @escaping @Sendable () -> Bool = { true },
        onVisible: @escaping @Sendable () -> Void = {}, onCommit: @escaping @Sendable () -> Void = {}
    ) {
        self.store = store
        self.log = log
        self.batching = batching
        self.watched = watched
        self.onVisible = onVisible
        self.onCommit = onCommit
        let thread = Thread { [self] in
            claim()
            run()
        }
        thread.name = "kith-writer"
        thread.start()
        let syncer = Thread { [self] in runSyncs() }
        syncer.name = "kith-log-sync"
        syncer.start()
    }

    func submit(_ deltas: [ProfileDelta], completion: @escaping Completion) { queue.submit(deltas, completion: completion) }

    @discardableResult
    func perform(_ task: @escaping @Sendable () -> Void) -> Bool { queue.perform(task) }

    var backlog: Int { queue.backlog }
    var commits: Int { commitCount.load(ordering: .relaxed) }
    var committedMessages: Int { committedMessageCount.load(ordering: .relaxed) }
    var acknowledgedLogSequence: UInt64 { acknowledged.load(ordering: .acquiring) }
    var committedLogSequence: UInt64 { committed.load(ordering: .acquiring) }
    var writeLogBytes: Int { log.openSegmentBytes }
    var writeLogSyncs: Int { logSyncCount.load(ordering: .relaxed) }

    /// Finishes what is queued (applied, committed, answered), then stops the threads.
    func stop() {
        queue.stop()
        finished.wait()
        unsynced.withLock { $0.stopped = true }
        syncWakeup.signal()
        syncFinished.wait()
    }

    // MARK: The writer thread

    private func run() {
        while true {
            if queue.wakeup.wait(timeout: .now() + .seconds(10)) == .timedOut {
                // Idle: everything appended is committed. An old segment goes now rather than
                // at the next commit, which may be far off.
                rotateLog(idle: true)
                continue
            }
            while let job = queue.peek() {
                switch job {
                case .task:
                    if case .task(let task) = queue.take() { task() }
                case .messages: runTransaction()
                }
            }
            if queue.stoppedAndEmpty {
                finished.signal()
                return
            }
        }
    }

    /// One transaction: requests taken while `batching` allows, each applied, appended and
    /// handed to the sync thread; then the commit. A request whose messages cannot be applied
    /// fails alone: the transaction runs again without it, the requests before it
    /// applied again to the same effect.
    private func runTransaction() {
        var requests: [Request] = []
        var appended = 0
        var messages = 0
        let started = DispatchTime.now().uptimeNanoseconds
        var attempts = 0
        while true {
            var handedOut = 0
            do {
                try store.applyGroups(
                    deferringSync: true,
                    next: {
                        if handedOut < requests.count {
                            handedOut += 1
                            return requests[handedOut - 1].deltas
                        }
                        guard let taken = nextRequest(started: started, messages: messages) else { return nil }
                        requests.append(Request(deltas: taken.0, completion: taken.1))
                        messages += taken.0.count
                        handedOut += 1
                        return taken.0
                    },
                    applied: { index, outcomes, logSequence in
                        if index < appended {
                            // Applied again (the map grew, or a later request failed): it must
                            // land where its acknowledgement said.
                            precondition(
                                requests[index].logSequence == logSequence,
                                "request \(index) applied again at log sequence \(logSequence), first at \(requests[index].logSequence ?? 0)")
                            return
                        }
                        precondition(index == appended, "request \(index) applied before request \(appended) was appended")
                        _ = log.append(requests[index].deltas)
                        requests[index].logSequence = logSequence
                        appended += 1
                        unwritten.append((requests[index].completion, WriteCommitted(outcomes: outcomes, ownSequence: logSequence)))
                        unwrittenMessages += requests[index].deltas.count
                    },
                    logPosition: { [log] in log.nextSequence - 1 })
                break
            } catch {
                if handedOut > appended {
                    // The last request handed out failed to apply: it is answered with the
                    // error, and the others are applied again without it.
                    let failed = requests.remove(at: appended)
                    messages -= failed.deltas.count
                    failed.completion(.failure(error))
                    continue
                }
                // The commit failed, with acknowledged requests in it: they are in the log, so
                // they must reach the store. A few tries; then stop, and the restart replays them.
                attempts += 1
                guard attempts < 3 else {
                    fatalError("the store could not commit \(appended) logged requests (\(error)); a restart applies them from the write log")
                }
                continue
            }
        }
        guard !requests.isEmpty else { return }
        commitCount.wrappingAdd(1, ordering: .relaxed)
        committedMessageCount.wrappingAdd(messages, ordering: .relaxed)
        // Visible now: reads waiting for these acknowledgements go ahead (after the counts, so
        // that a status that waited counts them).
        committed.max(requests.compactMap(\.logSequence).max() ?? 0, ordering: .releasing)
        onVisible()
        rotateLog()
    }

    /// Called when every record appended is committed: a new segment if the open one is due.
    /// The sync thread then lets replication and the change feed read the commit's entries,
    /// which the log holds once their records are synced, and after a rotation syncs the store
    /// and deletes the old segments.
    private func rotateLog(idle: Bool = false) {
        var rotatedAt: UInt64? = nil
        do { rotatedAt = try log.rotateIfDue(appliedThrough: log.nextSequence - 1) } catch {
            // The segment stays open until the next rotation tries again; nothing is lost.
            FileHandle.standardError.write(Data("kith: the write log could not start a new segment: \(error)\n".utf8))
        }
        // Idle with nothing to rotate: no commit since the last time, nothing to do.
        if idle && rotatedAt == nil { return }
        let through = committed.load(ordering: .acquiring)
        unsynced.withLock { state in
            state.committedThrough = max(state.committedThrough ?? 0, through)
            if let rotatedAt { state.removeBefore = rotatedAt }
        }
        syncWakeup.signal()
    }

    /// The next request for the open transaction, or nil when it should commit now.
    private func nextRequest(started: UInt64, messages: Int) -> ([ProfileDelta], Completion)? {
        var idleSince: UInt64? = nil
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            let next: WriteLogBatching.Next
            switch queue.peek() {
            case .task?: next = .task
            case .messages(let deltas, _)?: next = .request(messages: deltas.count)
            case nil:
                // A stopping writer commits what it holds at once.
                if queue.stopped {
                    writeAndHandToSync()
                    return nil
                }
                idleSince = idleSince ?? now
                next = .nothing(idleNanoseconds: now - idleSince!)
            }
            switch batching.decide(next, age: now - started, messages: messages, watched: watched()) {
            case .commit:
                writeAndHandToSync()
                return nil
            case .take:
                // Records go to the file while the sync thread is free and enough wait, so that
                // a sync is under way with the records since the last; more wait for it.
                let free = unsynced.withLock { !$0.syncing && $0.answers.isEmpty }
                if batching.writesBeforeTaking(requests: unwritten.count, messages: unwrittenMessages, syncThreadFree: free) {
                    writeAndHandToSync()
                }
                guard case .messages(let deltas, let completion)? = queue.take() else {
                    preconditionFailure("the writer's queue changed under it: only the writer takes jobs")
                }
                return (deltas, completion)
            case .wait(let nanoseconds):
                writeAndHandToSync()
                // A submit's signal may be taken here: the loop looks at the queue itself.
                _ = queue.wakeup.wait(timeout: .now() + .nanoseconds(Int(nanoseconds)))
            }
        }
    }

    // MARK: The sync thread

    /// Writes the records appended since the last time to the log's file, and gives their
    /// requests to the sync thread.
    private func writeAndHandToSync() {
        guard !unwritten.isEmpty else { return }
        log.flush()
        let answers = unwritten
        unwritten.removeAll(keepingCapacity: true)
        unwrittenMessages = 0
        unsynced.withLock { $0.answers += answers }
        syncWakeup.signal()
    }

    /// One sync of the log for every record appended since the last, then their answers; then
    /// the commits since the last, which those syncs made replayable.
    private func runSyncs() {
        while true {
            syncWakeup.wait()
            let work = unsynced.withLock { state in
                defer {
                    let stopped = state.stopped
                    state = SyncWork()
                    state.syncing = true
                    state.stopped = stopped
                }
                return state
            }
            if !work.answers.isEmpty {
                do {
                    try log.sync()
                    logSyncCount.wrappingAdd(1, ordering: .relaxed)
                } catch {
                    // Whether the records reached the disk is unknown, and the page cache may
                    // have dropped them (a failed fsync is not retried safely): stop, and the
                    // restart reads what the log holds.
                    fatalError("\(error)")
                }
                let highest = work.answers.compactMap(\.1.ownSequence).max() ?? 0
                // Raised before the answers go out: a read that follows one waits for its commit.
                acknowledged.max(highest, ordering: .releasing)
                for (completion, committed) in work.answers { completion(.success(committed)) }
            }
            unsynced.withLock { $0.syncing = false }
            if let committedThrough = work.committedThrough {
                // The commit's records were handed here before the commit, so they are synced
                // now (by this round or an earlier one): after any crash the node replays them
                // to these same entries. Peers may copy them without waiting for LMDB's sync.
                store.logIsDurable(through: committedThrough)
                onCommit()
            }
            if let first = work.removeBefore {
                do {
                    // The segments go only once the store holds their records for good.
                    try store.synchronize()
                    try log.removeSegments(before: first)
                } catch {
                    // The commits stay in the page cache and their records in the log: the next
                    // rotation tries again, or the restart replays them. Nothing is deleted.
                    FileHandle.standardError.write(Data("kith: the store could not be synced: \(error)\n".utf8))
                    unsynced.withLock { $0.removeBefore = $0.removeBefore ?? first }
                }
            }
            if work.stopped {
                syncFinished.signal()
                return
            }
        }
    }
}

/// A node's writer with a write-ahead log over a store, for the in-process benchmark
/// (`kith-bench`): submit requests, stop to commit what is open. The log is recovered first.
package struct LoggedWriterHandle: Sendable {
    package let submit: @Sendable ([ProfileDelta], @escaping @Sendable (Result<WriteCommitted, Error>) -> Void) -> Void
    package let stop: @Sendable () -> Void

    package init(store: LMDBProfileStore, directory: String) throws {
        let log = try Node.recoverWriteLog(directory, store: store, log: Log())
        let writer = LoggedWriter(store: store, log: log, claim: { store.claimWriter() })
        submit = { deltas, completion in writer.submit(deltas, completion: completion) }
        stop = { writer.stop() }
    }
}
