import KithCRDT
import KithLMDB
import KithProfile
import KithStore

struct LMDBTables: Sendable {
    let databases: [LMDBDatabase]

    init(environment: LMDBEnvironment) throws {
        databases = try Table.allCases.map { try environment.database(named: $0.name) }
    }

    subscript(table: Table) -> LMDBDatabase { databases[table.rawValue] }
}

/// Reads from LMDB tables, shared by the read-only and the read-write adapter.
protocol LMDBTableAccess: StoreReading {
    var reader: LMDBReadTransaction { get }
    var tables: LMDBTables { get }
}

extension LMDBTableAccess {
    func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? { try reader.get(tables[table], key) }
    func withValue<T>(_ table: Table, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        try reader.withValue(tables[table], key, body)
    }
    func scan(_ table: Table, from start: [UInt8], _ body: ([UInt8], [UInt8]) throws -> KithStore.ScanStep) throws {
        try reader.scan(tables[table], from: start) { key, value in try body(key, value) == .next ? .next : .stop }
    }
    func lastKey(_ table: Table) throws -> [UInt8]? { try reader.lastKey(tables[table]) }
    func firstEntry(_ table: Table, from start: [UInt8], sharing prefix: [UInt8]) throws -> (key: [UInt8], value: [UInt8]?)? {
        guard let entry = try reader.firstEntry(tables[table], from: start), entry.key.starts(with: prefix) else { return nil }
        return (entry.key, entry.value)
    }
    func count(_ table: Table) throws -> Int { try reader.count(tables[table]) }
}

struct LMDBReading: LMDBTableAccess {
    let reader: LMDBReadTransaction
    let tables: LMDBTables
}

struct LMDBWriting: LMDBTableAccess, StoreWriting {
    let transaction: LMDBWriteTransaction
    let tables: LMDBTables

    var reader: LMDBReadTransaction { transaction.reader }

    func put(_ table: Table, _ key: [UInt8], _ value: [UInt8], mode: PutMode) throws -> Bool {
        let lmdbMode: LMDBWriteTransaction.PutMode =
            switch mode {
            case .upsert: .upsert
            case .insertOnly: .insertOnly
            case .append: .append
            }
        return try transaction.put(tables[table], key, value, mode: lmdbMode)
    }

    func delete(_ table: Table, _ key: [UInt8]) throws -> Bool { try transaction.delete(tables[table], key) }
}
