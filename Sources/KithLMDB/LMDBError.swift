import CLMDB

#if canImport(Glibc)
    import Glibc
#endif

/// Every failure of an LMDB call, mapped from its return code in exactly one place (`check`).
public struct LMDBError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Equatable, Sendable {
        case keyExists, notFound, pageNotFound, corrupted, panic, versionMismatch, invalid, mapFull, databasesFull
        case readersFull, tlsFull, transactionFull, cursorStackFull, pageFull, mapResized, incompatible
        case badReaderSlot, badTransaction, badValueSize, badDatabaseHandle
        /// An operating-system error (errno), such as EIO on a full disk or EACCES.
        case system(Int32)
    }

    public var code: Code
    /// The LMDB call that failed, e.g. `mdb_put`.
    public var operation: String
    /// LMDB's own words for the code.
    public var message: String

    public init(returnCode: Int32, operation: String) {
        self.code = Self.code(for: returnCode)
        self.operation = operation
        self.message = String(cString: mdb_strerror(returnCode))
    }

    public var description: String { "\(operation) failed: \(message)" }

    private static func code(for rc: Int32) -> Code {
        switch rc {
        case MDB_KEYEXIST: .keyExists
        case MDB_NOTFOUND: .notFound
        case MDB_PAGE_NOTFOUND: .pageNotFound
        case MDB_CORRUPTED: .corrupted
        case MDB_PANIC: .panic
        case MDB_VERSION_MISMATCH: .versionMismatch
        case MDB_INVALID: .invalid
        case MDB_MAP_FULL: .mapFull
        case MDB_DBS_FULL: .databasesFull
        case MDB_READERS_FULL: .readersFull
        case MDB_TLS_FULL: .tlsFull
        case MDB_TXN_FULL: .transactionFull
        case MDB_CURSOR_FULL: .cursorStackFull
        case MDB_PAGE_FULL: .pageFull
        case MDB_MAP_RESIZED: .mapResized
        case MDB_INCOMPATIBLE: .incompatible
        case MDB_BAD_RSLOT: .badReaderSlot
        case MDB_BAD_TXN: .badTransaction
        case MDB_BAD_VALSIZE: .badValueSize
        case MDB_BAD_DBI: .badDatabaseHandle
        default: .system(rc)
        }
    }

    /// Throws unless `rc` is success.
    @inline(__always)
    static func check(_ rc: Int32, _ operation: @autoclosure () -> String) throws {
        if rc != 0 { throw LMDBError(returnCode: rc, operation: operation()) }
    }
}
