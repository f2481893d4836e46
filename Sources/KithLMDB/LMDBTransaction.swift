import CLMDB

/// What a scan callback asks for next.
public enum ScanStep: Sendable {
    case next, stop
}

/// Marks whether a transaction's closure is still running. Using a transaction after its
/// closure returned would touch freed LMDB memory; the check turns that bug into a clear trap.
final class TransactionLifetime: @unchecked Sendable {
    var isOpen = true
}

/// A read-only view inside `LMDBEnvironment.read` (and the read half of a write transaction).
/// Valid only inside the closure it was handed to; any use afterwards traps.
public struct LMDBReadTransaction {
    let handle: OpaquePointer
    let lifetime: TransactionLifetime

    var txn: OpaquePointer {
        precondition(lifetime.isOpen, "LMDB transaction used after its closure returned")
        return handle
    }

    /// The value at `key`, copied out, or nil.
    public func get(_ database: LMDBDatabase, _ key: [UInt8]) throws -> [UInt8]? {
        try key.withUnsafeBytes { keyBytes in try withValue(database, keyBytes) { Array($0) } }
    }

    /// `body`'s result for the value at `key`, or nil when there is none. The value is lent
    /// where it lies in LMDB's map, for `body` to read and copy what it keeps (a sealed row is
    /// opened straight from there, with no copy in between). It is valid only while `body`
    /// runs, and `body` must not write in this transaction (a write may move the page).
    public func withValue<T>(_ database: LMDBDatabase, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        var k = MDB_val(mv_size: key.count, mv_data: UnsafeMutableRawPointer(mutating: key.baseAddress))
        var v = MDB_val()
        let rc = mdb_get(txn, database.handle, &k, &v)
        if rc == MDB_NOTFOUND { return nil }
        try LMDBError.check(rc, "mdb_get \(database.name)")
        return try body(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
    }

    public func contains(_ database: LMDBDatabase, _ key: [UInt8]) throws -> Bool { try get(database, key) != nil }

    /// Visits entries in key order starting at the first key ≥ `start`, while `body` says `.next`.
    public func scan(
        _ database: LMDBDatabase, from start: [UInt8] = [], _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> ScanStep
    ) throws {
        var cursor: OpaquePointer?
        try LMDBError.check(mdb_cursor_open(txn, database.handle, &cursor), "mdb_cursor_open \(database.name)")
        defer { mdb_cursor_close(cursor) }
        var startKey = start
        var rc: Int32 = startKey.withUnsafeMutableBytes { bytes in
            var k = MDB_val(mv_size: bytes.count, mv_data: bytes.baseAddress)
            var v = MDB_val()
            return bytes.isEmpty ? mdb_cursor_get(cursor, &k, &v, MDB_FIRST) : mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE)
        }
        while rc == 0 {
            var k = MDB_val(), v = MDB_val()
            try LMDBError.check(mdb_cursor_get(cursor, &k, &v, MDB_GET_CURRENT), "mdb_cursor_get \(database.name)")
            if try body(copy(k), copy(v)) == .stop { return }
            rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)
        }
        if rc != MDB_NOTFOUND { try LMDBError.check(rc, "mdb_cursor_get \(database.name)") }
    }

    /// The first entry at or after `start`, or nil when there is none.
    public func firstEntry(_ database: LMDBDatabase, from start: [UInt8]) throws -> (key: [UInt8], value: [UInt8])? {
        var cursor: OpaquePointer?
        try LMDBError.check(mdb_cursor_open(txn, database.handle, &cursor), "mdb_cursor_open \(database.name)")
        defer { mdb_cursor_close(cursor) }
        var startKey = start
        var k = MDB_val(), v = MDB_val()
        let rc: Int32 = startKey.withUnsafeMutableBytes { bytes in
            k = MDB_val(mv_size: bytes.count, mv_data: bytes.baseAddress)
            return mdb_cursor_get(cursor, &k, &v, bytes.isEmpty ? MDB_FIRST : MDB_SET_RANGE)
        }
        if rc == MDB_NOTFOUND { return nil }
        try LMDBError.check(rc, "mdb_cursor_get \(database.name)")
        return (copy(k), copy(v))
    }

    /// Visits every entry whose key starts with `prefix`, in key order.
    public func scan(
        _ database: LMDBDatabase, prefix: [UInt8], _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> ScanStep
    ) throws {
        try scan(database, from: prefix) { key, value in
            guard key.starts(with: prefix) else { return .stop }
            return try body(key, value)
        }
    }

    /// The greatest key, or nil when the database is empty.
    public func lastKey(_ database: LMDBDatabase) throws -> [UInt8]? {
        var cursor: OpaquePointer?
        try LMDBError.check(mdb_cursor_open(txn, database.handle, &cursor), "mdb_cursor_open \(database.name)")
        defer { mdb_cursor_close(cursor) }
        var k = MDB_val(), v = MDB_val()
        let rc = mdb_cursor_get(cursor, &k, &v, MDB_LAST)
        if rc == MDB_NOTFOUND { return nil }
        try LMDBError.check(rc, "mdb_cursor_get \(database.name)")
        return copy(k)
    }

    /// The number of entries.
    public func count(_ database: LMDBDatabase) throws -> Int {
        var stat = MDB_stat()
        try LMDBError.check(mdb_stat(txn, database.handle, &stat), "mdb_stat \(database.name)")
        return stat.ms_entries
    }

    /// Bytes of the pages the database occupies (branch, leaf and overflow pages).
    public func bytes(_ database: LMDBDatabase) throws -> Int {
        var stat = MDB_stat()
        try LMDBError.check(mdb_stat(txn, database.handle, &stat), "mdb_stat \(database.name)")
        return (stat.ms_branch_pages + stat.ms_leaf_pages + stat.ms_overflow_pages) * Int(stat.ms_psize)
    }
}

/// A write transaction inside `LMDBEnvironment.write`; any use after the closure returns traps.
public struct LMDBWriteTransaction {
    let handle: OpaquePointer
    let lifetime: TransactionLifetime
    /// Where this transaction's writes are noted while a compaction runs (nil otherwise).
    let journal: JournalledWrites?

    var txn: OpaquePointer { reader.txn }

    public var reader: LMDBReadTransaction { LMDBReadTransaction(handle: handle, lifetime: lifetime) }

    public func get(_ database: LMDBDatabase, _ key: [UInt8]) throws -> [UInt8]? { try reader.get(database, key) }

    public func contains(_ database: LMDBDatabase, _ key: [UInt8]) throws -> Bool { try reader.contains(database, key) }

    public func scan(
        _ database: LMDBDatabase, prefix: [UInt8], _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> ScanStep
    ) throws { try reader.scan(database, prefix: prefix, body) }

    public func scan(
        _ database: LMDBDatabase, from start: [UInt8] = [], _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> ScanStep
    ) throws { try reader.scan(database, from: start, body) }

    public func lastKey(_ database: LMDBDatabase) throws -> [UInt8]? { try reader.lastKey(database) }

    public func count(_ database: LMDBDatabase) throws -> Int { try reader.count(database) }

    public enum PutMode: Sendable {
        /// Insert or replace.
        case upsert
        /// Insert only; returns false (and writes nothing) if the key exists.
        case insertOnly
        /// The key is greater than every key present (fast path for logs); LMDB checks it.
        case append
    }

    /// Writes `value` at `key`. Returns false only for `.insertOnly` on an existing key.
    @discardableResult
    public func put(_ database: LMDBDatabase, _ key: [UInt8], _ value: [UInt8], mode: PutMode = .upsert) throws -> Bool {
        let flags: UInt32 =
            switch mode {
            case .upsert: 0
            case .insertOnly: UInt32(MDB_NOOVERWRITE)
            case .append: UInt32(MDB_APPEND)
            }
        return try key.withUnsafeBytes { keyBytes in
            try value.withUnsafeBytes { valueBytes in
                var k = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
                var v = MDB_val(mv_size: valueBytes.count, mv_data: UnsafeMutableRawPointer(mutating: valueBytes.baseAddress))
                let rc = mdb_put(txn, database.handle, &k, &v, flags)
                if rc == MDB_KEYEXIST && mode == .insertOnly { return false }
                try LMDBError.check(rc, "mdb_put \(database.name)")
                journal?.writes.append(.put(database, key, value))
                return true
            }
        }
    }

    /// Deletes `key`; returns whether it was there.
    @discardableResult
    public func delete(_ database: LMDBDatabase, _ key: [UInt8]) throws -> Bool {
        try key.withUnsafeBytes { keyBytes in
            var k = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
            let rc = mdb_del(txn, database.handle, &k, nil)
            if rc == MDB_NOTFOUND { return false }
            try LMDBError.check(rc, "mdb_del \(database.name)")
            journal?.writes.append(.delete(database, key))
            return true
        }
    }

    /// Deletes `database` and everything in it from the environment; its handle must not be used again.
    public func drop(_ database: LMDBDatabase) throws {
        precondition(journal == nil, "table \(database.name) dropped while a compaction runs")
        try LMDBError.check(mdb_drop(txn, database.handle, 1), "mdb_drop \(database.name)")
    }

    /// Deletes the entries whose key starts with `prefix`, at most `limit` of them (the first in
    /// key order, so that a large deletion can be cut into transactions); returns how many.
    @discardableResult
    public func deletePrefix(_ database: LMDBDatabase, _ prefix: [UInt8], limit: Int = .max) throws -> Int {
        var keys: [[UInt8]] = []
        try reader.scan(database, prefix: prefix) { key, _ in
            keys.append(key)
            return keys.count < limit ? .next : .stop
        }
        for key in keys { try delete(database, key) }
        return keys.count
    }
}

@inline(__always)
private func copy(_ value: MDB_val) -> [UInt8] {
    guard value.mv_size > 0, let data = value.mv_data else { return [] }
    return Array(UnsafeRawBufferPointer(start: data, count: value.mv_size))
}
