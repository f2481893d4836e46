import Foundation
import KithCRDT
import KithCrypto
import KithLMDB
import KithProfile
import KithStore
import Synchronization

/// The durable store: one LMDB environment in a directory, sealed (see `Sealing`) under data
/// keys kept in a file of their own, `keyFile` (by default the directory's path + `.keys`).
public final class LMDBProfileStore: EngineBackedStore {
    package let engine: StoreEngine
    package let writerClaim = WriterClaim()
    public let environment: LMDBEnvironment
    let tables: LMDBTables
    let sealing: Sealing
    /// Identifiers this open moved from sealed layout 1 (`moveToIdentifierRows`), for the log.
    public let identifiersMovedOnOpen: Int
    /// Identifier rows this open gave a key header check (`checkIdentifierRows`), for the log.
    public let identifierRowsCheckedOnOpen: Int
    /// The log sequence of the newest commit, and of the newest one known to be on disk (they
    /// differ while commits whose sync was deferred wait for `synchronize`).
    private let logSequences = Mutex<(committed: UInt64, durable: UInt64)>((0, 0))

    public init(path: String, configuration: StoreConfiguration, keyFile: String? = nil, lmdb: LMDBEnvironment.Configuration = .init()) throws {
        engine = StoreEngine(configuration: configuration)
        environment = try LMDBEnvironment(path: path, configuration: lmdb)
        tables = try LMDBTables(environment: environment)
        sealing = Sealing(keys: try DataKeyStore(path: keyFile ?? path + ".keys"), hasher: engine.hasher)
        // A stop during a compaction leaves its unfinished copy (the key file's lock, held from
        // here, says no other store is making one).
        LMDBEnvironment.removeLeftoverCopy(LMDBEnvironment.compactingDirectory(of: path))
        (identifiersMovedOnOpen, identifierRowsCheckedOnOpen) = try Self.checkFormat(environment: environment, tables: tables, sealing: sealing)
        try destroyRetiredKeys()
        if try read({ try engine.replicationStateNeedsWork(in: $0) }) {
            try write { txn in try engine.reconcileReplicationState(in: txn) }
        }
        // A process that stopped after a deferred commit left it in the page cache, not on
        // disk: one sync makes everything this store holds durable before peers may read it.
        if environment.defersMetaSync { try environment.sync() }
        let last = try read { try engine.lastSequence(in: $0) }
        logSequences.withLock { $0 = (last, last) }
        // A new file is as compact as a file gets: growth is measured from its size once open.
        if try compactedFileBytes() == nil, try environment.read({ try LMDBReading(reader: $0, tables: tables).count(.documents) }) == 0 {
            try Self.recordCompactedFileBytes(environment.fileSize(), environment: environment, tables: tables)
        }
    }

    /// The key file in use.
    public var keyFile: String { sealing.keys.path }

    public func synchronize() throws {
        let committed = logSequences.withLock { $0.committed }
        try environment.sync()
        logSequences.withLock { $0.durable = max($0.durable, committed) }
    }

    public func durableLogSequence() -> UInt64 { logSequences.withLock { $0.durable } }

    public func logIsDurable(through sequence: UInt64) {
        logSequences.withLock { sequences in
            precondition(sequence <= sequences.committed, "log entries through \(sequence) vouched durable, only \(sequences.committed) committed")
            sequences.durable = max(sequences.durable, sequence)
        }
    }

    /// The key `identifier`'s rows are sealed with now, if it has any (for tests).
    func dataKeyID(of identifier: Identifier) throws -> DataKeyID? {
        try environment.read { txn in
            let pseudonym = Array(engine.hasher.forgetKeyBytes(for: identifier).prefix(Sealing.pseudonymSize))
            return try LMDBReading(reader: txn, tables: tables).get(.documents, pseudonym + [Sealing.ownerPart]).map {
                try SealingSession.identifierRowKeyID($0).id
            }
        }
    }

    /// Checks the store's format and sealed layout; brings a store of layout 1 or 2 to layout 3
    /// and returns how many identifiers it moved (from 1) and identifier rows it checked (from 2).
    private static func checkFormat(environment: LMDBEnvironment, tables: LMDBTables, sealing: Sealing) throws -> (moved: Int, checked: Int) {
        let layout = try environment.write { txn in
            let plain = LMDBWriting(transaction: txn, tables: tables)
            if let format = try plain.get(.meta, formatMetaKey) {
                guard StoreFormat.readable.contains(format) else {
                    throw StoreCorruption(
                        table: "meta", underlying: BinaryDecodingError(.unsupportedVersion, offset: 0, "store format \(format)"))
                }
                if format != StoreFormat.current { _ = try plain.put(.meta, formatMetaKey, StoreFormat.current, mode: .upsert) }
            }
            let layout = try plain.get(.meta, sealedLayoutMetaKey)
            switch layout {
            case [Self.sealedLayout]?, [Self.identifierRowsLayout]?, [Self.separateRowsLayout]?:
                if sealing.keys.createdNow, try plain.count(.documents) > 0 {
                    sealing.keys.discardIfCreatedNow()
                    throw DataKeyError(
                        "the key file \(sealing.keys.path) did not exist, but this store holds sealed data: give the store's key file (--key-file)")
                }

            case nil where try plain.count(.documents) == 0:
                _ = try plain.put(.meta, sealedLayoutMetaKey, [Self.sealedLayout], mode: .upsert)
            default:
                throw StoreCorruption(
                    table: "meta",
                    underlying: BinaryDecodingError(.unsupportedVersion, offset: 0, "a store written without sealing, or in another sealed layout"))
            }
            return layout
        }
        let moved = layout == [Self.separateRowsLayout] ? try moveToIdentifierRows(environment: environment, tables: tables, sealing: sealing) : 0
        if layout == [Self.separateRowsLayout] || layout == [Self.identifierRowsLayout] {
            try startIdentifierRowChecks(environment: environment, tables: tables)
        }
        return (moved, try checkIdentifierRows(environment: environment, tables: tables))
    }

    /// Sets a store of layout 2 to layout 3 (builds that cannot read it refuse the store from
    /// here), with every identifier row still to be checked (`checkIdentifierRows`).
    static func startIdentifierRowChecks(environment: LMDBEnvironment, tables: LMDBTables) throws {
        try environment.write { txn in
            let plain = LMDBWriting(transaction: txn, tables: tables)
            let layout = try plain.get(.meta, sealedLayoutMetaKey)
            precondition(layout == [identifierRowsLayout], "identifier rows checked in a store of layout \(layout ?? [])")
            _ = try plain.put(.meta, sealedLayoutMetaKey, [sealedLayout], mode: .upsert)
            _ = try plain.put(.meta, identifierRowChecksFromMetaKey, [], mode: .upsert)
        }
    }

    /// Sealed layout 3: an identifier's index, head, view, first edges and short ledger tail
    /// live in its owner row (`IdentifierRow`), whose key header carries a check
    /// (`SealingSession.sealIdentifierRow`).
    static let sealedLayout: UInt8 = 3
    /// Sealed layout 2: the same without the check, every ledger tail a row of its own. Opening
    /// such a store checks its identifier rows (`checkIdentifierRows`).
    static let identifierRowsLayout: UInt8 = 2
    /// Sealed layout 1: each of them was a row of its own. Opening such a store moves it to
    /// layout 2, then 3.
    static let separateRowsLayout: UInt8 = 1

    package func read<T>(_ body: (any StoreReading) throws -> T) throws -> T {
        try environment.read { txn in
            let sealed = SealedReading(base: LMDBReading(reader: txn, tables: tables), session: SealingSession(sealing, writing: false))
            return try body(LedgerBlockReading(base: sealed))
        }
    }

    /// One write transaction. Keys issued to it are durable already (made a pool at a time);
    /// keys an erasure retired are destroyed once it has committed (and, should the process stop
    /// in between, at the next open: the erasure left their ids in `meta`). If the transaction
    /// fails, its issued keys go back to the pool. LMDB may run the body again after growing the
    /// map, so each run has a session of its own.
    /// `deferringSync`: see `applyDeferringSync`.
    @discardableResult
    package func write<T>(deferringSync: Bool, _ body: (any StoreWriting) throws -> T) throws -> T {
        writerClaim.check()
        var sessions: [SealingSession] = []
        var lastSequence: UInt64 = 0
        let result: T
        do {
            result = try environment.write(deferringSync: deferringSync) { txn in
                let session = SealingSession(sealing, writing: true)
                sessions.append(session)
                let sealed = SealedWriting(base: LMDBWriting(transaction: txn, tables: tables), session: session)
                let writer = LedgerBlockWriting(base: sealed)
                let value = try body(writer)
                try sealed.finish()
                lastSequence = try engine.lastSequence(in: writer)
                return value
            }
        } catch {
            sealing.keys.release(sessions.flatMap(\.issued))
            throw error
        }
        // A commit that synced (every commit, unless deferred in a store that allows it) makes
        // every commit before it durable too.
        let synced = !(deferringSync && environment.defersMetaSync)
        logSequences.withLock { sequences in
            sequences.committed = max(sequences.committed, lastSequence)
            if synced { sequences.durable = sequences.committed }
        }
        // Only the last run committed: keys issued to the others were never used.
        sealing.keys.release(sessions.dropLast().flatMap(\.issued))
        if sessions.last?.retired.isEmpty == false { try destroyRetiredKeys() }
        return result
    }

    /// Destroys the keys erasures have retired, then forgets their ids.
    private func destroyRetiredKeys() throws {
        let rows = try environment.read { txn in
            var rows: [[UInt8]] = []
            try LMDBReading(reader: txn, tables: tables).scan(.meta, prefix: Sealing.retiredPrefix) { key, _ in
                rows.append(key)
                return .next
            }
            return rows
        }
        guard !rows.isEmpty else { return }
        try sealing.keys.destroy(rows.compactMap { SealedWriting.id(fromBytes: $0.dropFirst(Sealing.retiredPrefix.count)) })
        sealing.ciphers.removeAll()
        try environment.write { txn in
            let plain = LMDBWriting(transaction: txn, tables: tables)
            for row in rows { _ = try plain.delete(.meta, row) }
        }
    }

    /// A consistent copy of the store into `directory` with every page full, taken while it
    /// keeps serving (`LMDBEnvironment.backup`). Returns the copy's bytes.
    @discardableResult public func backup(to directory: String) throws -> Int {
        try environment.backup(to: directory, databases: tables.databases)
    }

    /// Bytes up to the highest page LMDB has used: the tables, the free pages below them and
    /// LMDB's own (the tables alone: `usedBytes()`, `NodeStore`).
    public var highWaterBytes: Int { environment.info().usedBytes }

    public func lastCommit() throws -> UInt64 { UInt64(environment.info().lastTransaction) }

    /// Bytes of pages each table occupies, by table name.
    public func tableBytes() throws -> [String: Int] {
        try environment.read { txn in
            var sizes: [String: Int] = [:]
            for table in Table.allCases { sizes[table.name] = try txn.bytes(tables[table]) }
            return sizes
        }
    }

    /// What the rows of `documents` hold, by part (`identifier` for identifier rows, `IdentifierRow`):
    /// how many, their key bytes, and their value bytes with what sealing adds to each (key id,
    /// nonce and tag). Page overhead is the table's pages less these (docs/storage.md, "Where
    /// the bytes go").
    public func documentRowSizes() throws -> [String: (rows: Int, keyBytes: Int, valueBytes: Int, sealingBytes: Int)] {
        try environment.read { txn in
            var sizes: [String: (rows: Int, keyBytes: Int, valueBytes: Int, sealingBytes: Int)] = [:]
            try LMDBReading(reader: txn, tables: tables).scan(.documents, from: []) { key, value in
                let partByte = key.count > Sealing.pseudonymSize ? key[Sealing.pseudonymSize] : Sealing.ownerPart
                let name = partByte == Sealing.ownerPart ? "identifier" : DocumentPart(rawValue: partByte).map { "\($0)" } ?? "part\(partByte)"
                let header = partByte == Sealing.ownerPart ? try SealingSession.identifierRowKeyID(value) : try SealingSession.keyID(value)
                let sealing = header.offset + AESGCM.overhead
                var size = sizes[name, default: (0, 0, 0, 0)]
                size.rows += 1
                size.keyBytes += key.count
                size.valueBytes += value.count
                size.sealingBytes += sealing
                sizes[name] = size
                return .next
            }
            return sizes
        }
    }
}
