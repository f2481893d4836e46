import CLMDB
import Glibc

extension LMDBEnvironment {
    /// A consistent copy of `databases` as of one snapshot into `directory` (created; must not
    /// already hold a database): a backup, and the compacted file an operator swaps in to give
    /// disk back (docs/storage.md). Every page of it is full: each table is written in key
    /// order (with `MDB_APPEND`, which also spares each put its search), so that every split
    /// leaves a full page behind. A store filled by random inserts keeps its leaves about
    /// two-thirds full, and `mdb_env_copy2`'s compacting copy keeps each page as it is; this
    /// copy holds the same rows in about two-thirds of the pages. Writers keep going while it runs. Values are copied as
    /// they lie (sealed rows stay sealed under the same keys). Built without syncs into a
    /// private environment (no lock file, no other user), synced once at the end; a copy that
    /// fails is removed. Returns the copy's bytes.
    public func backup(to directory: String, databases: [LMDBDatabase]) throws -> Int {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw LMDBError(returnCode: errno, operation: "mkdir \(directory)") }
        let file = "\(directory)/data.mdb"
        if access(file, F_OK) == 0 { throw LMDBError(returnCode: EEXIST, operation: "backup into \(directory)") }
        let copy = try openPrivateCopy(directory, tables: databases.count)
        do {
            try read { snapshot in
                for database in databases { try Self.append(database, from: snapshot.txn, into: copy) }
            }
            try LMDBError.check(mdb_env_sync(copy, 1), "mdb_env_sync \(directory)")
            mdb_env_close(copy)
        } catch {
            mdb_env_close(copy)
            unlink(file)
            throw error
        }
        var status = stat()
        // The copy is made and synced; its size is only reported (0 if it cannot be read back).
        return stat(file, &status) == 0 ? Int(status.st_size) : 0
    }

    /// A copy's environment in `directory`, opened privately: no lock file (no other user), no
    /// syncs until the caller's last, room for this environment's map and `tables` tables.
    func openPrivateCopy(_ directory: String, tables: Int) throws -> OpaquePointer {
        var copy: OpaquePointer?
        try LMDBError.check(mdb_env_create(&copy), "mdb_env_create")
        guard let copy else { throw LMDBError(returnCode: ENOMEM, operation: "mdb_env_create") }
        do {
            try LMDBError.check(mdb_env_set_mapsize(copy, info().mapSize), "mdb_env_set_mapsize")
            try LMDBError.check(mdb_env_set_maxdbs(copy, UInt32(max(tables, 1))), "mdb_env_set_maxdbs")
            try LMDBError.check(
                mdb_env_open(copy, directory, UInt32(MDB_NOSYNC | MDB_NOLOCK | MDB_NOTLS), 0o600), "mdb_env_open \(directory)")
        } catch {
            mdb_env_close(copy)
            throw error
        }
        return copy
    }

    /// Entries of a transaction's write before it commits: bounds the dirty pages one holds
    /// (LMDB keeps them in memory until the commit).
    static let backupBatch = 50_000

    /// Copies `database` from `source` (a read snapshot) into the environment `copy`, in key
    /// order, committing every `backupBatch` entries.
    private static func append(_ database: LMDBDatabase, from source: OpaquePointer, into copy: OpaquePointer) throws {
        var cursor: OpaquePointer?
        try LMDBError.check(mdb_cursor_open(source, database.handle, &cursor), "mdb_cursor_open \(database.name)")
        defer { mdb_cursor_close(cursor) }
        var key = MDB_val(), value = MDB_val()
        var rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST)
        var first = true
        repeat {
            var txn: OpaquePointer?
            try LMDBError.check(mdb_txn_begin(copy, nil, 0, &txn), "mdb_txn_begin")
            do {
                var handle: MDB_dbi = 0
                // The first transaction creates the table, even an empty one.
                try LMDBError.check(mdb_dbi_open(txn, database.name, first ? UInt32(MDB_CREATE) : 0, &handle), "mdb_dbi_open \(database.name)")
                first = false
                var written = 0
                while rc == MDB_SUCCESS && written < backupBatch {
                    try LMDBError.check(mdb_put(txn, handle, &key, &value, UInt32(MDB_APPEND)), "mdb_put \(database.name)")
                    written += 1
                    rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)
                }
                if rc != MDB_NOTFOUND { try LMDBError.check(rc, "mdb_cursor_get \(database.name)") }
            } catch {
                mdb_txn_abort(txn)
                throw error
            }
            // mdb_txn_commit frees the transaction whether or not it succeeds.
            try LMDBError.check(mdb_txn_commit(txn), "mdb_txn_commit")
        } while rc == MDB_SUCCESS
    }
}
