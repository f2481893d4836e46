import Foundation
import KithCRDT
import KithLMDB
import KithStore

extension LMDBProfileStore {
    /// The sizes of a data file before and after `compactDataFile`.
    public struct Compaction: Sendable, Equatable {
        public let bytesBefore: Int
        public let bytesAfter: Int
    }

    /// Gives the data file's free pages back to the file system before the store opens: LMDB
    /// never shrinks its file, which keeps the most pages ever in use (the change log's before
    /// truncation, rows before retention dropped them). A compacting copy of every table
    /// (`LMDBEnvironment.backup`: each table in key order, every page full, synced) is made in
    /// `<path>/compacting` and renamed over `data.mdb`, the directory synced; LMDB's lock file
    /// goes too (it describes the old file's readers). Rows are copied as they lie, sealed under
    /// the same keys; the write-ahead log, the origin and the audit beside them are the same
    /// store's, as after a clean stop.
    ///
    /// Holds the key file's lock throughout, so no other store has this data open. A stop before
    /// the rename leaves the old file in place (the unfinished copy is removed at the next
    /// call); after it, the copy is complete and synced. Returns nil when there is no store
    /// (nothing to compact, or no key file: the open that follows reports that).
    public static func compactDataFile(path: String, keyFile: String? = nil) throws -> Compaction? {
        let files = FileManager.default
        let file = path + "/data.mdb", scratch = LMDBEnvironment.compactingDirectory(of: path)
        LMDBEnvironment.removeLeftoverCopy(scratch)
        guard files.fileExists(atPath: file) else { return nil }
        let keys = try DataKeyStore(path: keyFile ?? path + ".keys")
        guard !keys.createdNow else {
            keys.discardIfCreatedNow()
            return nil
        }
        let before = try Self.fileSize(file)
        do {
            let environment = try LMDBEnvironment(path: path)
            defer { environment.close() }
            _ = try environment.backup(to: scratch, databases: try LMDBTables(environment: environment).databases)
        }
        guard rename(scratch + "/data.mdb", file) == 0 else {
            throw LMDBError(returnCode: errno, operation: "rename the compacted copy over \(file)")
        }
        try LMDBEnvironment.syncDirectory(path)
        LMDBEnvironment.removeLeftoverCopy(scratch)
        if files.fileExists(atPath: path + "/lock.mdb") { try files.removeItem(atPath: path + "/lock.mdb") }
        do {
            let environment = try LMDBEnvironment(path: path)
            defer { environment.close() }
            try recordCompactedFileBytes(try Self.fileSize(file), environment: environment, tables: try LMDBTables(environment: environment))
        }
        withExtendedLifetime(keys) {}
        return Compaction(bytesBefore: before, bytesAfter: try Self.fileSize(file))
    }

    /// Records the file's size as a compaction left it (`compactedFileBytesMetaKey`), synced:
    /// the growth a node's `FileCompactionRule` measures is from there, also after a restart.
    /// The copy has no free page, so this write's pages go past its end: the file is a few
    /// pages larger than the size it records, and the sizes a compaction reports are the
    /// file's, after it.
    static func recordCompactedFileBytes(_ bytes: Int, environment: LMDBEnvironment, tables: LMDBTables) throws {
        try environment.write { txn in
            _ = try LMDBWriting(transaction: txn, tables: tables).put(.meta, compactedFileBytesMetaKey, sequenceKey(UInt64(bytes)), mode: .upsert)
        }
    }

    /// The data file's size when a compaction last left it, or when the store was created; nil
    /// for a store an earlier build created and never compacted.
    public func compactedFileBytes() throws -> Int? {
        try environment.read { txn in
            guard let bytes = try LMDBReading(reader: txn, tables: tables).get(.meta, compactedFileBytesMetaKey) else { return nil }
            var reader = BinaryReader(bytes)
            guard bytes.count == 8, let value = Int(exactly: try reader.readBigEndianUInt64()) else {
                throw StoreCorruption(
                    table: "meta", underlying: BinaryDecodingError(.invalidValue, offset: 0, "a compacted file size of \(bytes.count) bytes"))
            }
            return value
        }
    }

    private static func fileSize(_ file: String) throws -> Int {
        var status = stat()
        guard stat(file, &status) == 0 else { throw LMDBError(returnCode: errno, operation: "stat \(file)") }
        return Int(status.st_size)
    }
}

extension LMDBProfileStore {
    /// Starts giving the data file's free pages back while the store serves (`LMDBCompaction`):
    /// run by the one writer between its transactions. Nil when readers left no moment to start
    /// in within `seconds`. The copy (`LMDBCompaction.copy`) may then be made on any thread.
    public func startCompaction(waitingUpTo seconds: Double) throws -> LMDBCompaction? {
        writerClaim.check()
        return try environment.startCompaction(waitingUpTo: seconds)
    }

    /// Swaps a copied compaction in, by the one writer between its transactions: the writes it
    /// committed meanwhile are in the copy, and the copy is synced, so every commit is durable
    /// after it.
    public func swap(_ compaction: LMDBCompaction, waitingUpTo seconds: Double) throws -> LMDBCompaction.Outcome {
        writerClaim.check()
        precondition(compaction.environment === environment, "a compaction of \(compaction.environment.path) swapped into \(environment.path)")
        let outcome = try compaction.swap(waitingUpTo: seconds)
        guard case .swapped(let bytesBefore, let copied) = outcome else { return outcome }
        try Self.recordCompactedFileBytes(copied, environment: environment, tables: tables)
        try synchronize()
        return .swapped(bytesBefore: bytesBefore, bytesAfter: environment.fileSize())
    }
}
