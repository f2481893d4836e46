import KithCRDT
import KithProfile
import Synchronization

/// The named tables of a Kith store (one LMDB named database each). See docs/storage.md.
package enum Table: Int, CaseIterable, Sendable {
    /// "format" → format version; "sequence" → the last local change sequence.
    case meta
    /// Everything about one identifier under one key prefix (see `DocumentPart`): a batch that
    /// touches a customer dirties one or two B-tree pages instead of one page per kind of record.
    case documents
    /// local sequence (8 bytes, big-endian) → change entry, for replication.
    case changes
    /// forget key (HMAC of an erased identifier) → erasure time.
    case forget
    /// local sequence → a change-log entry that travels ahead of a backlog: erasures and messages
    /// carrying consent decisions, kept apart as well so that a peer catching up can be sent
    /// them before the rest (node-local).
    case ahead
    /// tree node (its depth ‖ its key, `DigestTreeShape`) → the sum of the digests of the forget
    /// keys under it: the root, 32 ranges and 1,024 buckets, kept up to date at write time
    /// (see `DigestTree`).
    case merkle

    package var name: String {
        switch self {
        case .meta: "meta"
        case .documents: "documents"
        case .changes: "changes"
        case .forget: "forget"
        case .ahead: "ahead"
        case .merkle: "merkle"
        }
    }
}

/// The records kept under one identifier in `documents`, in key order: identifier key ‖ 0 ‖ part ‖ suffix.
/// Small records come first so they share a page; the ledger grows behind them.
package enum DocumentPart: UInt8, CaseIterable, Sendable {
    /// → canonical identifier key of the identifier's profile.
    case index = 1
    /// → the identifier's own `SourceHead` (traits, consent, groups, totals; no history).
    case head = 2
    /// → the `ProfileView`, when this identifier is its profile's canonical one.
    case view = 3
    /// ‖ other identifier key → link summary (kept under both ends).
    case edge = 4
    /// ‖ messageId → `LedgerRow`: every message the identifier's document has absorbed, with
    /// the event and its properties for behavioural messages.
    case ledger = 5
}

/// A key of the `documents` table, read: `owner ‖ 0 ‖ part ‖ suffix`. The owner is an identifier's
/// key (a kind byte, never 0, then a value with no 0 byte), so the first 0 byte ends it; the part
/// is a `DocumentPart`; the suffix is what the part names: a peer's identifier key for an edge,
/// a messageId for a ledger row, nothing for the others. `documentKey` writes them.
package struct RowKey {
    package let bytes: [UInt8]
    /// The offset of the separator: the owner's length.
    package let ownerCount: Int

    /// Nil for bytes that are not a row key (no separator, or no part after it).
    @inlinable package init?(_ bytes: [UInt8]) {
        guard let separator = bytes.firstIndex(of: 0), separator + 1 < bytes.count else { return nil }
        self.bytes = bytes
        ownerCount = separator
    }

    /// A row key the store wrote itself: not one is a precondition.
    @inlinable package init(stored bytes: [UInt8]) {
        guard let key = RowKey(bytes) else { preconditionFailure("a documents key of \(bytes.count) bytes with no part") }
        self = key
    }

    /// The owning identifier's key.
    @inlinable package var owner: ArraySlice<UInt8> { bytes[..<ownerCount] }
    /// The part's byte (`DocumentPart`'s raw value, or an unknown one).
    @inlinable package var partByte: UInt8 { bytes[ownerCount + 1] }
    @inlinable package var part: DocumentPart? { DocumentPart(rawValue: partByte) }
    @inlinable package var suffix: ArraySlice<UInt8> { bytes[(ownerCount + 2)...] }
}

/// The key of part `part` of identifier `identifierKey` (identifier keys contain no 0 byte).
package func documentKey(_ identifierKey: [UInt8], _ part: DocumentPart, _ suffix: some Collection<UInt8> = [UInt8]()) -> [UInt8] {
    var key = identifierKey
    key.reserveCapacity(identifierKey.count + 2 + suffix.count)
    key.append(0)
    key.append(part.rawValue)
    key.append(contentsOf: suffix)
    return key
}

/// `documentKey(identifier.key, part)` made in one allocation (every point read starts here).
package func documentKey(_ identifier: Identifier, _ part: DocumentPart) -> [UInt8] {
    var value = identifier.storedValue
    return value.withUTF8 { utf8 in
        [UInt8](unsafeUninitializedCapacity: utf8.count + 3) { key, initialized in
            key[0] = identifier.kind.code
            _ = UnsafeMutableBufferPointer(rebasing: key[1...]).initialize(from: utf8)
            key[utf8.count + 1] = 0
            key[utf8.count + 2] = part.rawValue
            initialized = utf8.count + 3
        }
    }
}

/// The prefix of every record of identifier `identifierKey`.
package func documentPrefix(_ identifierKey: [UInt8]) -> [UInt8] { identifierKey + [0] }

/// Bytes as a dictionary key, hashed in one pass (an array of bytes hashes byte by byte).
package struct ByteKey: Hashable {
    package let bytes: [UInt8]
    package init(_ bytes: [UInt8]) { self.bytes = bytes }
    package func hash(into hasher: inout Hasher) { bytes.withUnsafeBytes { hasher.combine(bytes: $0) } }
}

/// What a scan's body asks for next.
package enum ScanStep: Sendable {
    case next, stop
}

/// An append whose key does not sort after the table's last (LMDB's `MDB_KEYEXIST` for it).
struct AppendOutOfOrder: Error, CustomStringConvertible {
    package let table: String
    package var description: String { "append to \(table) out of key order" }
}

package enum PutMode: Sendable {
    case upsert, insertOnly, append
}

/// Reads from a consistent snapshot of the tables.
package protocol StoreReading {
    func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]?
    /// `body`'s result for the value at `key` (nil when there is none), the value lent for
    /// `body` to read only while it runs: `body` must not write in this transaction.
    func withValue<T>(_ table: Table, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T?
    /// Visits entries in key order from the first key ≥ `start`, while `body` says `.next`.
    func scan(_ table: Table, from start: [UInt8], _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> ScanStep) throws
    func lastKey(_ table: Table) throws -> [UInt8]?
    /// The first entry at or after `start` whose key begins with `prefix`, read in one seek: how
    /// a ledger row finds its block (`LedgerBlocks`). Sealed, the value is opened only when the
    /// key is within `prefix`, and is nil when it is gone (a row under a destroyed key).
    func firstEntry(_ table: Table, from start: [UInt8], sharing prefix: [UInt8]) throws -> (key: [UInt8], value: [UInt8]?)?
    func count(_ table: Table) throws -> Int
    /// The identifiers held here whose forget keys are in `wanted`.
    func identifiers(withForgetKeys wanted: Set<[UInt8]>, hasher: HMACForgetKeyHasher) throws -> [Identifier]
    /// The identifiers held here whose forget keys fall in digest-tree bucket `bucket`.
    func identifiers(inBucket bucket: Int, hasher: HMACForgetKeyHasher) throws -> [Identifier]
    /// The same for a run of buckets, in bucket order.
    func identifiers(inBuckets buckets: Range<Int>, hasher: HMACForgetKeyHasher) throws -> [Identifier]
    /// The first `limit` identifiers held whose forget keys come after `position` and lie in a
    /// bucket before `endBucket`, in forget-key order (a walk's: a bucket is a forget key's
    /// leading bits), each with its forget key. Sealed tables read from the position on and no
    /// further than the limit (their rows are in pseudonym order, a pseudonym being a forget
    /// key's first bytes, and each identifier listed opens a row); plain tables hash every
    /// identifier held, in one pass.
    func identifiers(after position: BucketWalkPosition, before endBucket: Int, atMost limit: Int, hasher: HMACForgetKeyHasher) throws
        -> [(forgetKey: [UInt8], identifier: Identifier)]
}

extension StoreReading {
    /// A copy lent: for tables whose values are not in memory as bytes already.
    package func withValue<T>(_ table: Table, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        try get(table, Array(key)).map { try $0.withUnsafeBytes(body) }
    }

    /// From a scan: for tables whose values are not opened to be read.
    package func firstEntry(_ table: Table, from start: [UInt8], sharing prefix: [UInt8]) throws -> (key: [UInt8], value: [UInt8]?)? {
        try firstEntryByScanning(self, table, from: start, sharing: prefix)
    }

    /// Plain tables know no pseudonyms: hash each identifier held (one seek per identifier).
    package func identifiers(withForgetKeys wanted: Set<[UInt8]>, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try identifiers(where: { wanted.contains(hasher.forgetKeyBytes(for: $0)) })
    }

    package func identifiers(inBucket bucket: Int, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try identifiers(where: { DigestTreeShape.bucket(of: hasher.forgetKeyBytes(for: $0)) == bucket })
    }

    /// Plain tables: one pass over every identifier, hashing each once.
    package func identifiers(inBuckets buckets: Range<Int>, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        var found: [(bucket: Int, identifier: Identifier)] = []
        _ = try identifiers(where: { identifier in
            let bucket = DigestTreeShape.bucket(of: hasher.forgetKeyBytes(for: identifier))
            if buckets.contains(bucket) { found.append((bucket, identifier)) }
            return false
        })
        return found.sorted { ($0.bucket, $0.identifier) < ($1.bucket, $1.identifier) }.map(\.identifier)
    }

    /// Plain tables: one pass over every identifier, hashing each once.
    package func identifiers(after position: BucketWalkPosition, before endBucket: Int, atMost limit: Int, hasher: HMACForgetKeyHasher) throws
        -> [(forgetKey: [UInt8], identifier: Identifier)]
    {
        guard position.bucket < endBucket else { return [] }
        var found: [(forgetKey: [UInt8], identifier: Identifier)] = []
        _ = try identifiers(where: { identifier in
            let forgetKey = hasher.forgetKeyBytes(for: identifier)
            if position.precedes(forgetKey), DigestTreeShape.bucket(of: forgetKey) < endBucket { found.append((forgetKey, identifier)) }
            return false
        })
        found.sort { $0.forgetKey.lexicographicallyPrecedes($1.forgetKey) }
        return Array(found.prefix(limit))
    }

    private func identifiers(where wanted: (Identifier) -> Bool) throws -> [Identifier] {
        var members: [Identifier] = []
        var start: [UInt8] = []
        while true {
            var next: [UInt8]?
            try scan(.documents, from: start) { key, _ in
                next = Array(RowKey(key)?.owner ?? key[...])
                return .stop
            }
            guard let identifierKey = next else { break }
            if let identifier = Identifier(key: identifierKey[...]), wanted(identifier) {
                members.append(identifier)
            }
            start = identifierKey + [1]
        }
        return members
    }
}

extension StoreReading {
    /// Visits every entry whose key starts with `prefix`, in key order.
    package func scan(_ table: Table, prefix: [UInt8], _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> ScanStep) throws {
        try scan(table, from: prefix) { key, value in key.starts(with: prefix) ? try body(key, value) : .stop }
    }
}

/// `StoreReading.firstEntry` read from `reading`'s scan.
package func firstEntryByScanning(_ reading: some StoreReading, _ table: Table, from start: [UInt8], sharing prefix: [UInt8]) throws -> (
    key: [UInt8], value: [UInt8]?
)? {
    var found: (key: [UInt8], value: [UInt8]?)?
    try reading.scan(table, from: start) { key, value in
        if key.starts(with: prefix) { found = (key, value) }
        return .stop
    }
    return found
}

/// Reads and writes inside one atomic transaction.
package protocol StoreWriting: StoreReading {
    @discardableResult func put(_ table: Table, _ key: [UInt8], _ value: [UInt8], mode: PutMode) throws -> Bool
    @discardableResult func delete(_ table: Table, _ key: [UInt8]) throws -> Bool
    /// Puts (upserts) each change with a value and deletes each without, no key twice: a table
    /// that stores rows together (`LedgerBlockWriting`) writes each block they fall in once.
    func write(_ table: Table, _ changes: [(key: [UInt8], value: [UInt8]?)]) throws
    /// The erased `identifiers`' data keys are to be destroyed when this transaction commits.
    func retireKeys(of identifiers: [Identifier]) throws
    /// Stores `owner`'s ledger rows in fewer bytes where ingest left them plain, rows unchanged
    /// (`LedgerBlockWriting`), at most `limit` values; returns how many it stored again.
    func deflateLedgerBlocks(of owner: [UInt8], atMost limit: Int) throws -> Int
    /// Stores what `owner` has one of (sealed: its identifier row) in fewer bytes where ingest
    /// left it plain, records unchanged; says whether it stored anything again.
    func deflateIdentifierRow(of owner: [UInt8]) throws -> Bool
    /// Whether `owner`'s last ledger block is stored with what it has one of (sealed: in its
    /// identifier row, while short), so that `deflateIdentifierRow` deflates it, not
    /// `deflateLedgerBlocks`.
    func keepsLedgerTailWithIdentifierRow(of owner: [UInt8]) throws -> Bool
    /// Writes stored rows of `documents` again, as they are, in stored key order, so that they
    /// fill their pages: from `start` (where the last call said to go on; empty: the table's
    /// first row) up to the rows of owners in digest-tree bucket `bucket` (`bucketCount`: the
    /// table's end; a start past it goes on to the table's end), at most `limit` of them.
    /// Returns how many, and where the next call goes on (nil: this one reached the table's
    /// end). Rows do not change; tables that keep no pages (in memory) do nothing.
    func repack(from start: [UInt8], beforeBucket bucket: Int, atMost limit: Int) throws -> (rows: Int, next: [UInt8]?)
    /// Stores a transaction's change-log entries as one record (`ChangeRecord`): a writer that
    /// seals entries one by one takes them as values, not as a record to decode again.
    func putChanges(_ entries: [ChangeEntry], at key: [UInt8], mode: PutMode) throws
}

/// A table view that reads through another one unchanged: the writers that change only how
/// writes happen (sealing, the digest tree) forward every read but what they override.
package protocol ReadingThrough: StoreReading {
    var readThrough: any StoreReading { get }
}

extension ReadingThrough {
    package func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? { try readThrough.get(table, key) }
    package func withValue<T>(_ table: Table, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        try readThrough.withValue(table, key, body)
    }
    package func scan(_ table: Table, from start: [UInt8], _ body: ([UInt8], [UInt8]) throws -> ScanStep) throws {
        try readThrough.scan(table, from: start, body)
    }
    package func lastKey(_ table: Table) throws -> [UInt8]? { try readThrough.lastKey(table) }
    package func firstEntry(_ table: Table, from start: [UInt8], sharing prefix: [UInt8]) throws -> (key: [UInt8], value: [UInt8]?)? {
        try readThrough.firstEntry(table, from: start, sharing: prefix)
    }
    package func count(_ table: Table) throws -> Int { try readThrough.count(table) }
    package func identifiers(withForgetKeys wanted: Set<[UInt8]>, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try readThrough.identifiers(withForgetKeys: wanted, hasher: hasher)
    }
    package func identifiers(inBucket bucket: Int, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try readThrough.identifiers(inBucket: bucket, hasher: hasher)
    }

    package func identifiers(inBuckets buckets: Range<Int>, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try readThrough.identifiers(inBuckets: buckets, hasher: hasher)
    }

    package func identifiers(after position: BucketWalkPosition, before endBucket: Int, atMost limit: Int, hasher: HMACForgetKeyHasher) throws
        -> [(forgetKey: [UInt8], identifier: Identifier)]
    {
        try readThrough.identifiers(after: position, before: endBucket, atMost: limit, hasher: hasher)
    }
}

extension StoreWriting {
    /// One by one, for tables that store each row alone.
    package func write(_ table: Table, _ changes: [(key: [UInt8], value: [UInt8]?)]) throws {
        for (key, value) in changes {
            if let value { try put(table, key, value, mode: .upsert) } else { try delete(table, key) }
        }
    }

    /// Plain tables have no keys to destroy.
    package func retireKeys(of identifiers: [Identifier]) throws {}

    /// Tables that store each row alone have no blocks to deflate.
    package func deflateLedgerBlocks(of owner: [UInt8], atMost limit: Int) throws -> Int { 0 }

    /// Plain tables keep no identifier rows.
    package func deflateIdentifierRow(of owner: [UInt8]) throws -> Bool { false }
    package func keepsLedgerTailWithIdentifierRow(of owner: [UInt8]) throws -> Bool { false }
    package func repack(from start: [UInt8], beforeBucket bucket: Int, atMost limit: Int) throws -> (rows: Int, next: [UInt8]?) { (0, nil) }

    package func putChanges(_ entries: [ChangeEntry], at key: [UInt8], mode: PutMode) throws {
        try put(.changes, key, ChangeRecord.encode(entries), mode: mode)
    }
}

// MARK: - Memory

/// Sorted in-memory tables: the embedded storage for simulation and tests. A write transaction
/// keeps an undo log and rolls back when its closure throws, so batches are atomic here too.
final class MemoryTables: @unchecked Sendable {
    struct SortedTable {
        var values: [[UInt8]: [UInt8]] = [:]
        var keys: [[UInt8]] = []

        func position(of key: [UInt8]) -> Int {
            var low = 0, high = keys.count
            while low < high {
                let mid = (low + high) / 2
                if keys[mid].lexicographicallyPrecedes(key) { low = mid + 1 } else { high = mid }
            }
            return low
        }

        mutating func set(_ key: [UInt8], _ value: [UInt8]?) {
            if let value {
                if values.updateValue(value, forKey: key) == nil { keys.insert(key, at: position(of: key)) }
            } else if values.removeValue(forKey: key) != nil {
                keys.remove(at: position(of: key))
            }
        }
    }

    var tables = [SortedTable](repeating: SortedTable(), count: Table.allCases.count)
    /// The most bytes of keys and values the tables may hold; a write past it fails like a full disk.
    let byteLimit: Int
    var bytes = 0

    init(byteLimit: Int) {
        self.byteLimit = byteLimit
    }
}

struct MemoryStoreFull: Error, CustomStringConvertible {
    var limit: Int
    var description: String { "the in-memory store is full (\(limit) bytes)" }
}

/// Reads from the in-memory tables, shared by the read-only and the read-write adapter.
protocol MemoryTableAccess: StoreReading {
    var storage: MemoryTables { get }
}

extension MemoryTableAccess {
    func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? { storage.tables[table.rawValue].values[key] }

    func scan(_ table: Table, from start: [UInt8], _ body: ([UInt8], [UInt8]) throws -> ScanStep) throws {
        // A snapshot of the keys from `start` on: the body may write to the same table.
        let sorted = storage.tables[table.rawValue]
        for key in sorted.keys[sorted.position(of: start)...] {
            guard let value = storage.tables[table.rawValue].values[key] else { continue }
            if try body(key, value) == .stop { return }
        }
    }

    func lastKey(_ table: Table) throws -> [UInt8]? { storage.tables[table.rawValue].keys.last }
    func count(_ table: Table) throws -> Int { storage.tables[table.rawValue].keys.count }
}

struct MemoryReading: MemoryTableAccess {
    let storage: MemoryTables
}

final class MemoryWriting: MemoryTableAccess, StoreWriting {
    let storage: MemoryTables
    private var undo: [(Table, [UInt8], [UInt8]?)] = []

    init(storage: MemoryTables) {
        self.storage = storage
    }

    func put(_ table: Table, _ key: [UInt8], _ value: [UInt8], mode: PutMode) throws -> Bool {
        let old = storage.tables[table.rawValue].values[key]
        switch mode {
        case .insertOnly where old != nil: return false
        case .append:
            if let last = storage.tables[table.rawValue].keys.last, !last.lexicographicallyPrecedes(key) {
                throw AppendOutOfOrder(table: table.name)
            }
        default: break
        }
        let growth = key.count + value.count - (old.map { key.count + $0.count } ?? 0)
        guard storage.bytes + growth <= storage.byteLimit else { throw MemoryStoreFull(limit: storage.byteLimit) }
        undo.append((table, key, old))
        storage.bytes += growth
        storage.tables[table.rawValue].set(key, value)
        return true
    }

    func delete(_ table: Table, _ key: [UInt8]) throws -> Bool {
        guard let old = storage.tables[table.rawValue].values[key] else { return false }
        undo.append((table, key, old))
        storage.bytes -= key.count + old.count
        storage.tables[table.rawValue].set(key, nil)
        return true
    }

    /// Restores every table to its state before this transaction.
    func rollBack() {
        for (table, key, old) in undo.reversed() {
            let current = storage.tables[table.rawValue].values[key]
            storage.bytes += (old.map { key.count + $0.count } ?? 0) - (current.map { key.count + $0.count } ?? 0)
            storage.tables[table.rawValue].set(key, old)
        }
        undo.removeAll()
    }
}
