import KithLMDB

/// One sorted run of the audit's subject index: rows `id ‖ subject prefix ‖ record key`, all in
/// the table of its level, written in key order once and never changed (docs/privacy.md).
struct AuditRun: Equatable, Sendable {
    var level: Int
    var id: UInt64
    var rows: Int
    /// The least and greatest record keys it indexes: a run whose last record is past the
    /// retention is dropped whole.
    var firstRecord: [UInt8]
    var lastRecord: [UInt8]

    /// Its key in the run registry: level, then id, so a level's runs are listed oldest first.
    var registryKey: [UInt8] { [UInt8(level)] + bigEndian(id) }

    func encodedValue() -> [UInt8] { bigEndian(UInt64(rows)) + firstRecord + lastRecord }

    init(level: Int, id: UInt64, rows: Int, firstRecord: [UInt8], lastRecord: [UInt8]) {
        self.level = level
        self.id = id
        self.rows = rows
        self.firstRecord = firstRecord
        self.lastRecord = lastRecord
    }

    init(registryKey key: [UInt8], value: [UInt8]) throws {
        let recordKeySize = AuditIndexLayout.recordKeySize
        guard key.count == 9, Int(key[0]) < AuditIndexLayout.levels, value.count == 8 + 2 * recordKeySize else { throw AuditIndexDamaged() }
        self.init(
            level: Int(key[0]), id: integer(key[1...]), rows: Int(integer(value[..<8])),
            firstRecord: Array(value[8..<(8 + recordKeySize)]), lastRecord: Array(value[(8 + recordKeySize)...]))
    }
}

/// The registry or a run's rows are not what this layout writes.
struct AuditIndexDamaged: Error {}

/// Sizes and policy of the index, and the pure decisions over its runs.
///
/// Why runs: the subject hashes are random, so a single B-tree indexed in place dirties one
/// page (4 KiB copied and written) per row once it is larger than a batch — the index cost
/// most of the audit's writing under read load. A run is sorted in memory and appended, so a
/// row costs its own 32 bytes; merging runs of a level `fanIn` at a time keeps their number
/// logarithmic (at most `fanIn - 1` a level) at the price of rewriting each row once a level.
enum AuditIndexLayout {
    static let prefixSize = 8
    static let recordKeySize = 16
    static let rowSize = 8 + prefixSize + recordKeySize
    static let fanIn = 4
    /// Level tables; 4^15 index passes are beyond any node's life, so the last is never full.
    static let levels = 16

    static func tableName(level: Int) -> String { "index.\(level)" }

    /// The runs to merge next: the `fanIn` oldest of the lowest level that has `fanIn`, or nil.
    /// The last level is never merged (it has nowhere to go).
    static func nextMerge(_ runs: [AuditRun]) -> [AuditRun]? {
        for level in 0..<(levels - 1) {
            let candidates = runs.filter { $0.level == level }.sorted { $0.id < $1.id }
            if candidates.count >= fanIn { return Array(candidates.prefix(fanIn)) }
        }
        return nil
    }

    /// The row of `recordKey` under `subject` in run `id`.
    static func row(run id: UInt64, subject: some Collection<UInt8>, recordKey: [UInt8]) -> [UInt8] {
        bigEndian(id) + subject.prefix(prefixSize) + recordKey
    }

    static func recordKey(ofRow row: [UInt8]) -> [UInt8] { Array(row.suffix(recordKeySize)) }
}

/// A merge of runs into one of the next level, written in chunks of transactions so that the
/// audit's own commits are not held up for long. Its rows are not registered until the last
/// chunk, which registers the new run and unregisters the sources in one transaction; a crash
/// before that leaves rows of an unregistered run, which the next open deletes.
struct AuditMerge {
    var sources: [AuditRun]
    var target: AuditRun
    /// Record keys before this one are past the retention, and their rows are left out.
    var cutoff: [UInt8]
    var readers: [RunReader]

    /// Reads a run's rows in order, a block at a time (the transaction changes between chunks).
    struct RunReader {
        let level: Int
        let id: UInt64
        /// The next row is the first key greater than this one (nil: from the run's start).
        var after: [UInt8]?
        var buffered: [[UInt8]] = []
        var position = 0
        var exhausted = false

        init(_ run: AuditRun) {
            level = run.level
            id = run.id
        }

        /// The current row (its subject prefix and record key), refilling from `txn` as needed.
        mutating func head(_ txn: LMDBWriteTransaction, _ table: LMDBDatabase) throws -> ArraySlice<UInt8>? {
            if position == buffered.count && !exhausted { try refill(txn, table) }
            return position < buffered.count ? buffered[position].dropFirst(8) : nil
        }

        mutating func advance() {
            after = buffered[position]
            position += 1
        }

        private mutating func refill(_ txn: LMDBWriteTransaction, _ table: LMDBDatabase) throws {
            let prefix = bigEndian(id)
            var rows: [[UInt8]] = []
            try txn.scan(table, from: after ?? prefix) { key, _ in
                guard key.starts(with: prefix) else { return .stop }
                if let after, key == after { return .next }
                guard key.count == AuditIndexLayout.rowSize else { throw AuditIndexDamaged() }
                rows.append(key)
                return rows.count < 4_096 ? .next : .stop
            }
            buffered = rows
            position = 0
            exhausted = rows.isEmpty
        }
    }

    init(sources: [AuditRun], id: UInt64, cutoff: [UInt8]) {
        self.sources = sources
        target = AuditRun(level: sources[0].level + 1, id: id, rows: 0, firstRecord: [], lastRecord: [])
        self.cutoff = cutoff
        readers = sources.map(RunReader.init)
    }

    /// Appends up to `limit` merged rows to the target's table; returns whether the merge is done.
    mutating func step(_ txn: LMDBWriteTransaction, tables: [LMDBDatabase], limit: Int) throws -> Bool {
        var written = 0
        while written < limit {
            var least: Int?
            var leastRow: ArraySlice<UInt8> = []
            for index in readers.indices {
                guard let row = try readers[index].head(txn, tables[readers[index].level]) else { continue }
                if least == nil || row.lexicographicallyPrecedes(leastRow) {
                    least = index
                    leastRow = row
                }
            }
            guard let least else { return true }
            readers[least].advance()
            let recordKey = Array(leastRow.suffix(AuditIndexLayout.recordKeySize))
            guard !recordKey.lexicographicallyPrecedes(cutoff) else { continue }
            try txn.put(tables[target.level], bigEndian(target.id) + leastRow, [], mode: .append)
            include(recordKey)
            written += 1
        }
        return false
    }

    private mutating func include(_ recordKey: [UInt8]) {
        if target.rows == 0 || recordKey.lexicographicallyPrecedes(target.firstRecord) { target.firstRecord = recordKey }
        if target.rows == 0 || target.lastRecord.lexicographicallyPrecedes(recordKey) { target.lastRecord = recordKey }
        target.rows += 1
    }
}

func bigEndian(_ value: UInt64) -> [UInt8] {
    (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) }
}

func integer(_ bytes: ArraySlice<UInt8>) -> UInt64 {
    bytes.reduce(0) { $0 << 8 | UInt64($1) }
}
