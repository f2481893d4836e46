import CLMDB
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A named database inside an environment. Only handles from `LMDBEnvironment.database` exist.
public struct LMDBDatabase: Sendable, Hashable {
    let handle: MDB_dbi
    public let name: String
}

/// One LMDB environment (one `data.mdb` file) per process and path.
///
/// LMDB's rules, which this type enforces or documents:
/// - Transactions are closures (`read`, `write`): commit on return, abort on throw, never held
///   across an `await`. Values are copied out before the closure returns.
/// - One write transaction at a time (LMDB serialises writers); readers never block writers.
/// - Read transactions are not tied to threads (`MDB_NOTLS`), so tasks may hop threads.
/// - The map grows instead of failing a write: on `MDB_MAP_FULL` the write is aborted, the map
///   doubled (every other transaction of this process waits on the resize lock, as LMDB requires),
///   and the write closure run again. Write closures must therefore only touch the transaction.
/// - Stale reader slots left by crashed processes are cleared at open.
/// - Never open the same path twice in one process (LMDB's locks are per process).
/// - A compacting swap (`startCompaction`) replaces the file under the open environment; like a
///   map resize it holds the exclusive lock while it does, so every use of `env` holds the lock.
public final class LMDBEnvironment: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// The initial map size; it doubles on demand up to `maximumMapSize`.
        public var mapSize: Int = 256 << 20
        public var maximumMapSize: Int = 1 << 40
        public var maximumDatabases: UInt32 = 16
        public var maximumReaders: UInt32 = 256
        /// false: commits are not fsynced (MDB_NOSYNC); a crash of the OS may lose recent
        /// commits, a crash of the process does not. Only for tests and throwaway data.
        public var durable: Bool = true
        /// true (with `durable`): a commit does not sync its metadata page itself
        /// (MDB_NOMETASYNC), so that a caller may let one sync cover several commits:
        /// `write(deferringSync: true)` returns before its commit is durable, and the commit is
        /// durable once a later `write` or `sync()` returns (each syncs the whole file). Every
        /// other `write` syncs before it returns, as with this off. LMDB keeps its integrity
        /// either way; an OS crash may only undo commits whose sync was deferred.
        public var allowsDeferredSync: Bool = false

        public init() {}
    }

    public let path: String
    /// LMDB's environment: replaced only by a compacting swap, under the exclusive lock.
    var env: OpaquePointer
    let configuration: Configuration
    /// Held shared by every transaction and every other use of `env`, exclusively by a map
    /// resize and a compacting swap.
    let resizeLock: UnsafeMutablePointer<pthread_rwlock_t>
    var closed = false
    /// How many stale reader slots were cleared when the environment was opened.
    public let staleReadersCleared: Int
    /// Whether LMDB leaves the metadata sync out of commits (MDB_NOMETASYNC, from `allowsDeferredSync`).
    public let defersMetaSync: Bool
    /// The tables opened so far, in the order they were opened: a swap opens them again in that
    /// order, so that each handle stays what it was.
    var openedDatabases: [LMDBDatabase] = []
    /// Added to LMDB's transaction ids, so that `Info.lastTransaction` keeps growing across a
    /// compacting swap (the copy numbers its transactions afresh).
    var transactionOffset = 0
    /// The writes committed since a compaction started, while one runs (`startCompaction`).
    let journal = Mutex<CompactionJournal?>(nil)

    /// Opens (creating if needed) the environment in directory `path`.
    public init(path: String, configuration: Configuration = Configuration()) throws {
        self.path = path
        self.configuration = configuration
        if mkdir(path, 0o700) != 0 && errno != EEXIST { throw LMDBError(returnCode: errno, operation: "mkdir \(path)") }
        (env, staleReadersCleared) = try Self.open(path: path, configuration: configuration, mapSize: configuration.mapSize)
        defersMetaSync = configuration.durable && configuration.allowsDeferredSync
        resizeLock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        // Writer preference: a pending resize must not starve behind a stream of readers.
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(resizeLock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
        // A bigger map left by an earlier run (or another process) is adopted.
        try adoptMapSize()
    }

    /// An environment of LMDB opened in directory `path`, and how many stale reader slots it cleared.
    static func open(path: String, configuration: Configuration, mapSize: Int) throws -> (OpaquePointer, staleReaders: Int) {
        var env: OpaquePointer?
        try LMDBError.check(mdb_env_create(&env), "mdb_env_create")
        guard let env else { throw LMDBError(returnCode: ENOMEM, operation: "mdb_env_create") }
        do {
            try LMDBError.check(mdb_env_set_mapsize(env, mapSize), "mdb_env_set_mapsize")
            try LMDBError.check(mdb_env_set_maxdbs(env, configuration.maximumDatabases), "mdb_env_set_maxdbs")
            try LMDBError.check(mdb_env_set_maxreaders(env, configuration.maximumReaders), "mdb_env_set_maxreaders")
            var flags = UInt32(MDB_NOTLS)
            if !configuration.durable { flags |= UInt32(MDB_NOSYNC) }
            if configuration.durable && configuration.allowsDeferredSync { flags |= UInt32(MDB_NOMETASYNC) }
            try LMDBError.check(mdb_env_open(env, path, flags, 0o600), "mdb_env_open \(path)")
            var dead: Int32 = 0
            try LMDBError.check(mdb_reader_check(env, &dead), "mdb_reader_check")
            return (env, Int(dead))
        } catch {
            mdb_env_close(env)
            throw error
        }
    }

    deinit {
        close()
        pthread_rwlock_destroy(resizeLock)
        resizeLock.deallocate()
    }

    /// Closes the environment. Every transaction must have ended.
    public func close() {
        pthread_rwlock_wrlock(resizeLock)
        defer { pthread_rwlock_unlock(resizeLock) }
        guard !closed else { return }
        closed = true
        dropSpareReaders()
        mdb_env_close(env)
    }

    /// Opens (creating if asked) a named database.
    public func database(named name: String, create: Bool = true) throws -> LMDBDatabase {
        precondition(journal.withLock { $0 == nil }, "table \(name) opened while a compaction of \(path) runs")
        let database = try write { transaction in
            var handle: MDB_dbi = 0
            try LMDBError.check(
                mdb_dbi_open(transaction.txn, name, create ? UInt32(MDB_CREATE) : 0, &handle), "mdb_dbi_open \(name)")
            return LMDBDatabase(handle: handle, name: name)
        }
        if !openedDatabases.contains(database) { openedDatabases.append(database) }
        return database
    }

    // MARK: - Transactions

    /// Runs `body` in a read-only snapshot.
    public func read<T>(_ body: (LMDBReadTransaction) throws -> T) throws -> T {
        pthread_rwlock_rdlock(resizeLock)
        defer { pthread_rwlock_unlock(resizeLock) }
        let txn = try beginRead()
        let lifetime = TransactionLifetime()
        defer {
            lifetime.isOpen = false
            endRead(txn)  // a read transaction has nothing to commit
        }
        return try body(LMDBReadTransaction(handle: txn, lifetime: lifetime))
    }

    /// Read transactions that ended, reset, for the next reads to renew (`MDB_NOTLS` lets any
    /// thread renew one): a renewal keeps the transaction's memory and its reader slot, where a
    /// new one allocates and takes the reader table's lock. A reset transaction holds no
    /// snapshot, so it keeps no old pages alive. Addresses, at most `spareReaderLimit`.
    private let spareReaders = Mutex<[UInt]>([])
    static let spareReaderLimit = 8

    private func beginRead() throws -> OpaquePointer {
        if let address = spareReaders.withLock({ $0.popLast() }), let txn = OpaquePointer(bitPattern: address) {
            if mdb_txn_renew(txn) == MDB_SUCCESS { return txn }
            mdb_txn_abort(txn)  // e.g. another process grew the map: a new transaction adopts it
        }
        return try begin(flags: UInt32(MDB_RDONLY))
    }

    private func endRead(_ txn: OpaquePointer) {
        mdb_txn_reset(txn)
        let kept = spareReaders.withLock { spares -> Bool in
            guard spares.count < Self.spareReaderLimit else { return false }
            spares.append(UInt(bitPattern: Int(bitPattern: txn)))
            return true
        }
        if !kept { mdb_txn_abort(txn) }
    }

    /// Frees the spare read transactions (before the map is resized or the environment closed).
    func dropSpareReaders() {
        for address in spareReaders.withLock({ spares in
            defer { spares.removeAll() }; return spares
        }) {
            if let txn = OpaquePointer(bitPattern: address) { mdb_txn_abort(txn) }
        }
    }

    /// How many ended read transactions are kept for renewal (for tests).
    var spareReaderCount: Int { spareReaders.withLock { $0.count } }

    /// Runs `body` in a write transaction: committed when it returns, aborted when it throws.
    /// If the map fills up, the map is grown and `body` runs again from the start.
    /// The commit is durable when this returns, unless `deferringSync` (see
    /// `Configuration.allowsDeferredSync`; without it the flag changes nothing).
    @discardableResult
    public func write<T>(deferringSync: Bool = false, _ body: (LMDBWriteTransaction) throws -> T) throws -> T {
        while true {
            do {
                let result = try writeOnce(body)
                if configuration.durable && configuration.allowsDeferredSync && !deferringSync { try sync() }
                return result
            } catch let error as LMDBError where error.code == .mapFull {
                try growMap()
            }
        }
    }

    private func writeOnce<T>(_ body: (LMDBWriteTransaction) throws -> T) throws -> T {
        pthread_rwlock_rdlock(resizeLock)
        defer { pthread_rwlock_unlock(resizeLock) }
        let txn = try begin(flags: 0)
        let lifetime = TransactionLifetime()
        defer { lifetime.isOpen = false }
        // A compaction starts only while no transaction is open, so a transaction that begins
        // without a journal commits before the compaction's copy takes its snapshot.
        let writes = journal.withLock { $0 == nil } ? nil : JournalledWrites()
        let result: T
        do {
            result = try body(LMDBWriteTransaction(handle: txn, lifetime: lifetime, journal: writes))
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        // mdb_txn_commit frees the transaction whether or not it succeeds.
        try LMDBError.check(mdb_txn_commit(txn), "mdb_txn_commit")
        if let writes { journal.withLock { $0?.add(writes) } }
        return result
    }

    private func begin(flags: UInt32) throws -> OpaquePointer {
        precondition(!closed, "transaction on a closed LMDB environment \(path)")
        var txn: OpaquePointer?
        var rc = mdb_txn_begin(env, nil, flags, &txn)
        if rc == MDB_MAP_RESIZED {
            // Another process grew the map: adopt its size (needs the exclusive lock).
            pthread_rwlock_unlock(resizeLock)
            defer { pthread_rwlock_rdlock(resizeLock) }
            try adoptMapSize()
            rc = MDB_MAP_RESIZED
        }
        if rc == MDB_MAP_RESIZED { rc = mdb_txn_begin(env, nil, flags, &txn) }
        try LMDBError.check(rc, "mdb_txn_begin")
        return txn!
    }

    private func adoptMapSize() throws {
        pthread_rwlock_wrlock(resizeLock)
        defer { pthread_rwlock_unlock(resizeLock) }
        dropSpareReaders()
        try LMDBError.check(mdb_env_set_mapsize(env, 0), "mdb_env_set_mapsize")
    }

    private func growMap() throws {
        pthread_rwlock_wrlock(resizeLock)
        defer { pthread_rwlock_unlock(resizeLock) }
        dropSpareReaders()
        let current = infoHoldingLock().mapSize
        guard current < configuration.maximumMapSize else {
            throw LMDBError(returnCode: MDB_MAP_FULL, operation: "grow map beyond \(configuration.maximumMapSize) bytes")
        }
        try LMDBError.check(mdb_env_set_mapsize(env, min(current * 2, configuration.maximumMapSize)), "mdb_env_set_mapsize")
    }

    // MARK: - Operations

    public struct Info: Sendable, Equatable {
        /// The map's size (the most the file may grow to before the next resize).
        public var mapSize: Int
        /// Bytes of pages in use (last page number + 1, times the page size).
        public var usedBytes: Int
        public var pageSize: Int
        /// The id of the last committed write transaction: it moves with every commit that
        /// changed anything, and with a compacting swap (never back).
        public var lastTransaction: Int = 0
    }

    public func info() -> Info {
        pthread_rwlock_rdlock(resizeLock)
        defer { pthread_rwlock_unlock(resizeLock) }
        return infoHoldingLock()
    }

    /// `info()` for a caller that holds the lock, shared or exclusive.
    func infoHoldingLock() -> Info {
        var envInfo = MDB_envinfo()
        var stat = MDB_stat()
        mdb_env_info(env, &envInfo)
        mdb_env_stat(env, &stat)
        let pageSize = Int(stat.ms_psize)
        return Info(
            mapSize: envInfo.me_mapsize, usedBytes: (envInfo.me_last_pgno + 1) * pageSize, pageSize: pageSize,
            lastTransaction: envInfo.me_last_txnid + transactionOffset)
    }

    /// The size of `data.mdb` on disk.
    public func fileSize() -> Int {
        var status = stat()
        return stat("\(path)/data.mdb", &status) == 0 ? Int(status.st_size) : 0
    }

    /// Flushes every commit so far to disk: those whose sync was deferred, or all of them in
    /// an environment opened non-durable.
    public func sync() throws {
        pthread_rwlock_rdlock(resizeLock)
        defer { pthread_rwlock_unlock(resizeLock) }
        try LMDBError.check(mdb_env_sync(env, 1), "mdb_env_sync")
    }
}
