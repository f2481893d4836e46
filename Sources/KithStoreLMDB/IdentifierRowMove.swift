import KithCRDT
import KithLMDB
import KithStore

extension LMDBProfileStore {
    /// Moves a store of sealed layout 1 (an identifier's index, head, view and edges each in a
    /// row of its own) to identifier rows, before the store serves. Each transaction moves at most
    /// `ownersPerTransaction` owners, every one whole: their records sealed into the owner row
    /// under the key that sealed it, their own rows deleted. A stop in between (or after
    /// `transactionLimit` transactions, for tests) leaves moved and unmoved owners; the next
    /// open goes on from the start, skipping owner rows already moved (`IdentifierRow` reads
    /// both forms). The layout is set to 2 in the last transaction (its rows
    /// without the key header check of layout 3, which `checkIdentifierRows` adds). Returns the owners moved.
    static func moveToIdentifierRows(
        environment: LMDBEnvironment, tables: LMDBTables, sealing: Sealing, ownersPerTransaction: Int = 5_000, transactionLimit: Int = .max
    ) throws -> Int {
        var start: [UInt8] = []
        var moved = 0
        for _ in 0..<transactionLimit {
            let next: [UInt8]? = try environment.write { txn in
                let plain = LMDBWriting(transaction: txn, tables: tables)
                let session = SealingSession(sealing, writing: true)
                let (owners, next) = try identifierRows(in: plain, from: start, atMost: ownersPerTransaction)
                for owner in owners {
                    let pseudonym = Array(owner.key.prefix(Sealing.pseudonymSize))
                    moved += try moveOwner(pseudonym, sealed: owner.sealed, in: plain, session: session, sealing: sealing) ? 1 : 0
                }
                if next == nil { _ = try plain.put(.meta, sealedLayoutMetaKey, [identifierRowsLayout], mode: .upsert) }
                return next
            }
            guard let next else { break }
            start = next
        }
        return moved
    }

    /// Sealed layout 2 to 3: gives each identifier row the check of its key header
    /// (`SealingSession.sealIdentifierRow`). Headers are plain and a box's associated data is
    /// its row's key, so no row is opened. Each transaction checks at most `rowsPerTransaction`
    /// rows and records in `meta` where the next one begins; the last deletes that record. A
    /// stop in between (or after `transactionLimit` transactions, for tests) is taken up at the
    /// next open. Returns the rows checked; none when the store has nothing left to check.
    static func checkIdentifierRows(
        environment: LMDBEnvironment, tables: LMDBTables, rowsPerTransaction: Int = 20_000, transactionLimit: Int = .max
    ) throws -> Int {
        var checked = 0
        for _ in 0..<transactionLimit {
            let more = try environment.write { txn -> Bool in
                let plain = LMDBWriting(transaction: txn, tables: tables)
                guard let start = try plain.get(.meta, identifierRowChecksFromMetaKey) else { return false }
                let (rows, next) = try identifierRows(in: plain, from: start, atMost: rowsPerTransaction)
                for row in rows {
                    let withCheck = try decode(row.sealed, table: .documents) { try SealingSession.addingHeaderCheck($0) }
                    try plain.put(.documents, row.key, withCheck, mode: .upsert)
                }
                checked += rows.count
                if let next {
                    _ = try plain.put(.meta, identifierRowChecksFromMetaKey, next, mode: .upsert)
                } else {
                    _ = try plain.delete(.meta, identifierRowChecksFromMetaKey)
                }
                return next != nil
            }
            guard more else { break }
        }
        return checked
    }

    /// The stored identifier rows (`pseudonym ‖ 0`) from `start`, at most `limit` of them, and
    /// the key of the next one (nil: none is left): one transaction's share of a pass over them.
    private static func identifierRows(in plain: LMDBWriting, from start: [UInt8], atMost limit: Int) throws -> (
        rows: [(key: [UInt8], sealed: [UInt8])], next: [UInt8]?
    ) {
        var rows: [(key: [UInt8], sealed: [UInt8])] = []
        var next: [UInt8]?
        try plain.scan(.documents, from: start) { key, value in
            guard key.count == Sealing.pseudonymSize + 1, key[Sealing.pseudonymSize] == Sealing.ownerPart else { return .next }
            guard rows.count < limit else {
                next = key
                return .stop
            }
            rows.append((key, value))
            return .next
        }
        return (rows, next)
    }

    /// Moves one owner; false when there was nothing to move (moved before, or erased: a row
    /// under a destroyed key cannot be read, and the erasure left nothing else of it).
    private static func moveOwner(
        _ pseudonym: [UInt8], sealed: [UInt8], in plain: LMDBWriting, session: SealingSession, sealing: Sealing
    ) throws -> Bool {
        let rowKey = pseudonym + [Sealing.ownerPart]
        let id = try SealingSession.keyID(sealed).id
        guard let key = sealing.keys.key(for: id), let opened = try session.open(sealed, associatedData: rowKey, table: .documents) else {
            return false
        }
        guard IdentifierRow.isSeparateRowsOwner(opened) else { return false }
        var row = try decode(opened, table: .documents) { try IdentifierRow(decoding: $0) }
        let open = { (key: [UInt8], stored: [UInt8]) throws -> [UInt8] in
            guard let value = try session.open(stored, associatedData: key, table: .documents) else {
                throw StoreCorruption(
                    table: Table.documents.name,
                    underlying: BinaryDecodingError(.invalidValue, offset: 0, "a row under a destroyed key beside a live owner row"))
            }
            return value
        }
        for part in IdentifierRow.heldParts.sorted() {
            let partKey = pseudonym + [part]
            guard let stored = try plain.get(.documents, partKey) else { continue }
            row.set(part, [], try open(partKey, stored))
            try plain.delete(.documents, partKey)
        }
        // Its first edges too, as a store written now keeps them (`IdentifierRow.inlineEdgeLimit`).
        let edgePrefix = pseudonym + [DocumentPart.edge.rawValue]
        var edges: [(key: [UInt8], stored: [UInt8])] = []
        try plain.scan(.documents, from: edgePrefix) { key, stored in
            guard key.starts(with: edgePrefix), edges.count < IdentifierRow.inlineEdgeLimit else { return .stop }
            edges.append((key, stored))
            return .next
        }
        for edge in edges {
            let (peer, value) = try decode(try open(edge.key, edge.stored), table: .documents) { try SealedReading.splitEdge($0) }
            row.set(DocumentPart.edge.rawValue, Array(peer), value)
            try plain.delete(.documents, edge.key)
        }
        // And its ledger tail, when short (`IdentifierRow.inlineLedgerTailLimit`).
        let tailKey = pseudonym + [IdentifierRow.ledgerPart] + LedgerBlock.tailSuffix
        if let stored = try plain.get(.documents, tailKey) {
            let tail = try open(tailKey, stored)
            if tail.count <= IdentifierRow.inlineLedgerTailLimit {
                row.set(IdentifierRow.ledgerPart, LedgerBlock.tailSuffix, tail)
                try plain.delete(.documents, tailKey)
            }
        }
        try plain.put(.documents, rowKey, try session.seal(row.encoded(), id, key, associatedData: rowKey), mode: .upsert)
        return true
    }
}
