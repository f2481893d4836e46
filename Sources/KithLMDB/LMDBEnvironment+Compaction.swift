import CLMDB
import Dispatch
import Glibc
import Synchronization

/// One write of a committed transaction, kept while a compaction runs to be done again in its copy.
enum JournalledWrite {
    case put(LMDBDatabase, [UInt8], [UInt8])
    case delete(LMDBDatabase, [UInt8])

    var bytes: Int {
        switch self {
        case .put(_, let key, let value): key.count + value.count
        case .delete(_, let key): key.count
        }
    }
}

/// The writes of one transaction while a compaction runs: added to the compaction's journal
/// once it commits, dropped if it aborts.
final class JournalledWrites {
    var writes: [JournalledWrite] = []
}

/// Every write committed since a compaction started, in commit order, until its copy has them
/// too. Puts and deletes set a key to a value or to nothing, so doing again writes the copy's
/// snapshot already holds changes nothing: a key ends as the last write left it.
struct CompactionJournal {
    /// More than this many bytes of keys and values, and the compaction gives up (the writes
    /// outran the copy); the journal then keeps nothing more.
    let byteLimit: Int
    private(set) var writes: [JournalledWrite] = []
    private(set) var bytes = 0
    private(set) var overflowed = false

    init(byteLimit: Int) { self.byteLimit = byteLimit }

    mutating func add(_ transaction: JournalledWrites) {
        guard !overflowed else { return }
        bytes += transaction.writes.reduce(0) { $0 + $1.bytes }
        if bytes > byteLimit {
            overflowed = true
            writes = []
        } else {
            writes += transaction.writes
        }
    }

    /// The writes kept so far, which the journal then forgets.
    mutating func take() -> [JournalledWrite] {
        defer { writes = [] }
        return writes
    }
}

/// A compacting copy of an open environment, swapped in for its file while it serves
/// (docs/storage.md, "Compaction while serving"): LMDB never shrinks its file, and this gives the
/// free pages back without a restart.
///
/// 1. `LMDBEnvironment.startCompaction`, at a moment when no transaction is open: from here
///    every committed write is also noted in a journal.
/// 2. `copy()`, on any thread, while readers and the writer go on: every table, from one
///    snapshot, in key order with every page full (`backup`), into `<path>/compacting`.
/// 3. `swap(waitingUpTo:)`: the journal's writes are done again in the copy and the copy synced
///    while the writer goes on; then, holding the exclusive lock (`holdingExclusiveLock`: no
///    transaction open, readers held back at most `readerStallLimit` while it waits), the last
///    writes too, the environment closed, the copy renamed over `data.mdb`, the directory synced
///    and the environment opened again on it, each table at the handle it had. The old file
///    stays open until `releaseOldFile`, so that its blocks are freed outside the lock.
///
/// A stop at any point before the rename leaves the old file, complete (the copy is removed at
/// the next open); after it, the copy holds every commit so far and is synced.
public final class LMDBCompaction: @unchecked Sendable {
    public enum Outcome: Sendable, Equatable {
        /// The copy is the environment's file now.
        case swapped(bytesBefore: Int, bytesAfter: Int)
        /// Readers kept the environment busy past the wait: nothing changed.
        case readersBusy
        /// More writes came during the copy than the journal keeps: nothing changed.
        case tooManyWrites
    }

    public let environment: LMDBEnvironment
    let scratch: String
    let bytesBefore: Int
    /// How long the swap held the exclusive lock (every transaction waited that long at most).
    public private(set) var exclusiveNanoseconds: UInt64 = 0
    private var copied = false
    private var ended = false

    init(environment: LMDBEnvironment, scratch: String) {
        self.environment = environment
        self.scratch = scratch
        bytesBefore = environment.fileSize()
    }

    /// The swapped-out data file, still open: its blocks go when it is closed.
    let retiredFile = Mutex<Int32>(-1)

    /// Closes the swapped-out data file, which frees its blocks (a while for a large file): on
    /// any thread, after `swap`. Nothing if there is none.
    public func releaseOldFile() {
        let file = retiredFile.withLock { file in
            defer { file = -1 }
            return file
        }
        if file >= 0 { Glibc.close(file) }
    }

    /// A compaction let go unfinished (its caller stopped) must not leave the journal running,
    /// nor the old file open.
    deinit {
        abandon()
        releaseOldFile()
    }

    /// Writes the compacting copy (step 2). Readers and the writer go on meanwhile.
    public func copy() throws {
        precondition(!copied && !ended, "a compaction of \(environment.path) copied twice, or after it ended")
        do {
            _ = try environment.backup(to: scratch, databases: environment.openedDatabases)
        } catch {
            abandon()
            throw error
        }
        copied = true
    }

    /// Brings the copy up to date and swaps it in (step 3), waiting at most `seconds` for a
    /// moment with no transaction open.
    public func swap(waitingUpTo seconds: Double) throws -> Outcome {
        precondition(copied && !ended, "a compaction of \(environment.path) swapped before its copy, or after it ended")
        let copyFile = scratch + "/data.mdb"
        var copy: OpaquePointer?
        do {
            copy = try environment.openPrivateCopy(scratch, tables: environment.openedDatabases.count)
            guard try replay(takeJournal(stopping: false), into: copy!) else {
                abandonClosing(&copy)
                return .tooManyWrites
            }
            // The copy's pages go to disk before the lock: under it only the last writes' do.
            try LMDBError.check(mdb_env_sync(copy, 1), "mdb_env_sync \(scratch)")
            // The old file, held open through the rename: the file system frees its blocks when
            // the last descriptor goes (tens of milliseconds for 100 MB here), not under the
            // lock, and not on the writer either when the caller lets it go (`releaseOldFile`).
            var oldFile: Int32 = -1
            defer { if oldFile >= 0 { retiredFile.withLock { $0 = oldFile } } }
            let swapped = try environment.holdingExclusiveLock(waitingUpTo: seconds) { () throws -> Bool in
                let start = DispatchTime.now().uptimeNanoseconds
                defer { exclusiveNanoseconds = DispatchTime.now().uptimeNanoseconds - start }
                guard try replay(takeJournal(stopping: true), into: copy!) else { return false }
                try LMDBError.check(mdb_env_sync(copy, 1), "mdb_env_sync \(scratch)")
                mdb_env_close(copy)
                copy = nil
                oldFile = Glibc.open(environment.path + "/data.mdb", O_RDONLY | O_CLOEXEC)
                try environment.replaceFileHoldingLock(with: copyFile)
                return true
            }
            switch swapped {
            case nil:
                abandonClosing(&copy)
                return .readersBusy
            case false?:
                abandonClosing(&copy)
                return .tooManyWrites
            case true?:
                ended = true
                removeScratch()
                return .swapped(bytesBefore: bytesBefore, bytesAfter: environment.fileSize())
            }
        } catch {
            abandonClosing(&copy)
            throw error
        }
    }

    /// Ends the compaction without a swap: the journal stops, the copy goes.
    public func abandon() {
        guard !ended else { return }
        ended = true
        environment.journal.withLock { $0 = nil }
        removeScratch()
    }

    private func abandonClosing(_ copy: inout OpaquePointer?) {
        if let open = copy { mdb_env_close(open) }
        copy = nil
        abandon()
    }

    private func removeScratch() { LMDBEnvironment.removeLeftoverCopy(scratch) }

    /// The journal's writes so far (nil if it overflowed); `stopping`: the journal ends too.
    private func takeJournal(stopping: Bool) -> [JournalledWrite]? {
        environment.journal.withLock { journal -> [JournalledWrite]? in
            guard var kept = journal else { preconditionFailure("the journal of a compaction of \(environment.path) ended early") }
            defer { journal = stopping ? nil : kept }
            return kept.overflowed ? nil : kept.take()
        }
    }

    /// Does `writes` again in the copy, in one transaction; false when the journal overflowed.
    private func replay(_ writes: [JournalledWrite]?, into copy: OpaquePointer) throws -> Bool {
        guard let writes else { return false }
        guard !writes.isEmpty else { return true }
        var txn: OpaquePointer?
        try LMDBError.check(mdb_txn_begin(copy, nil, 0, &txn), "mdb_txn_begin \(scratch)")
        do {
            // The copy's own handles, by name; the writes go through the same calls as any.
            let transaction = LMDBWriteTransaction(handle: txn!, lifetime: TransactionLifetime(), journal: nil)
            defer { transaction.lifetime.isOpen = false }
            var tables: [String: LMDBDatabase] = [:]
            func table(_ database: LMDBDatabase) throws -> LMDBDatabase {
                if let known = tables[database.name] { return known }
                var handle: MDB_dbi = 0
                try LMDBError.check(mdb_dbi_open(txn, database.name, 0, &handle), "mdb_dbi_open \(database.name) in \(scratch)")
                tables[database.name] = LMDBDatabase(handle: handle, name: database.name)
                return tables[database.name]!
            }
            for write in writes {
                switch write {
                case .put(let database, let key, let value): try transaction.put(table(database), key, value)
                // The snapshot may have been taken after the write: then there is nothing to delete.
                case .delete(let database, let key): try transaction.delete(table(database), key)
                }
            }
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        try LMDBError.check(mdb_txn_commit(txn), "mdb_txn_commit \(scratch)")
        return true
    }
}

extension LMDBEnvironment {
    /// Where a compacting copy is made: inside the environment's directory, so that the rename
    /// that swaps it in stays within one file system.
    public static func compactingDirectory(of path: String) -> String { path + "/compacting" }

    /// Starts a compaction (`LMDBCompaction`): removes a leftover copy and starts the journal at a
    /// moment when no transaction is open, waiting at most `seconds` for one (nil if none came).
    /// The journal keeps at most `journalLimit` bytes of writes. One compaction at a time.
    public func startCompaction(journalLimit: Int = 256 << 20, waitingUpTo seconds: Double) throws -> LMDBCompaction? {
        let scratch = Self.compactingDirectory(of: path)
        Self.removeLeftoverCopy(scratch)
        let started = try holdingExclusiveLock(waitingUpTo: seconds) { () -> Bool in
            journal.withLock { journal in
                precondition(journal == nil, "a second compaction of \(path) started")
                journal = CompactionJournal(byteLimit: journalLimit)
            }
            return true
        }
        return started == nil ? nil : LMDBCompaction(environment: self, scratch: scratch)
    }

    /// Removes an unfinished compacting copy (a stop during a compaction leaves one). Failures
    /// are not reported here: a copy left in place makes the next one refuse, naming it (`backup`).
    public static func removeLeftoverCopy(_ scratch: String) {
        unlink(scratch + "/data.mdb")
        unlink(scratch + "/lock.mdb")
        rmdir(scratch)
    }

    /// Runs `body` holding the exclusive lock; nil when it could not be had in time. First it is
    /// tried for at moments when nobody holds it, for up to `seconds` (a waiting exclusive lock
    /// holds new readers back, event loops among them); under steady load there may be no such
    /// moment, so then it is waited for, for at most `readerStallLimit`: the longest a reader
    /// waits behind a compaction, besides the swap itself.
    func holdingExclusiveLock<T>(waitingUpTo seconds: Double, _ body: () throws -> T) throws -> T? {
        let giveUpAt = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        var locked = pthread_rwlock_trywrlock(resizeLock) == 0
        while !locked && DispatchTime.now().uptimeNanoseconds < giveUpAt {
            usleep(50)
            locked = pthread_rwlock_trywrlock(resizeLock) == 0
        }
        if !locked {
            var deadline = timespec()
            clock_gettime(CLOCK_REALTIME, &deadline)
            let nanoseconds = Int(deadline.tv_nsec) + Int(Self.readerStallLimit * 1e9)
            deadline.tv_sec += nanoseconds / 1_000_000_000
            deadline.tv_nsec = nanoseconds % 1_000_000_000
            guard pthread_rwlock_timedwrlock(resizeLock, &deadline) == 0 else { return nil }
        }
        defer { pthread_rwlock_unlock(resizeLock) }
        precondition(!closed, "a compaction of the closed LMDB environment \(path)")
        return try body()
    }

    /// How long a compaction may hold new transactions back while it waits for those under way.
    static let readerStallLimit = 0.05

    /// Swaps `copyFile` (complete and synced) in for `data.mdb`. The caller holds the exclusive
    /// lock. Before the rename a failure leaves the environment as it was; after it, the copy is
    /// the store on disk, and an environment that cannot be opened on it stops the process.
    func replaceFileHoldingLock(with copyFile: String) throws {
        let before = infoHoldingLock()
        dropSpareReaders()
        mdb_env_close(env)
        let renameFailure =
            rename(copyFile, path + "/data.mdb") == 0
            ? nil : LMDBError(returnCode: errno, operation: "rename the compacted copy over \(path)/data.mdb")
        do {
            if renameFailure == nil { try Self.syncDirectory(path) }
            (env, _) = try Self.open(path: path, configuration: configuration, mapSize: before.mapSize)
            try reopenDatabasesHoldingLock()
        } catch {
            preconditionFailure(
                renameFailure == nil
                    ? "the compacted copy is \(path)/data.mdb now, complete and synced, but could not be opened: \(error)"
                    : "LMDB environment \(path) could not be opened again after a failed swap: \(error)")
        }
        if let renameFailure { throw renameFailure }
        // The copy numbers its transactions afresh: the offset carries the count on.
        transactionOffset += before.lastTransaction + 1 - infoHoldingLock().lastTransaction
    }

    /// Opens every table this environment had open, in the same order, so each keeps its handle.
    private func reopenDatabasesHoldingLock() throws {
        var txn: OpaquePointer?
        try LMDBError.check(mdb_txn_begin(env, nil, 0, &txn), "mdb_txn_begin")
        do {
            for database in openedDatabases {
                var handle: MDB_dbi = 0
                try LMDBError.check(mdb_dbi_open(txn, database.name, UInt32(MDB_CREATE), &handle), "mdb_dbi_open \(database.name)")
                precondition(handle == database.handle, "table \(database.name) reopened as handle \(handle), was \(database.handle)")
            }
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        try LMDBError.check(mdb_txn_commit(txn), "mdb_txn_commit")
    }

    /// A rename is durable once its directory is synced.
    public static func syncDirectory(_ path: String) throws {
        let descriptor = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { throw LMDBError(returnCode: errno, operation: "open \(path)") }
        defer { Glibc.close(descriptor) }
        guard fsync(descriptor) == 0 else { throw LMDBError(returnCode: errno, operation: "fsync \(path)") }
    }
}
