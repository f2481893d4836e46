import KithCRDT
import KithCrypto
import KithProfile
import KithStore

/// Writes of sealed tables (reads as `SealedReading`).
struct SealedWriting: StoreWriting, ReadingThrough {
    let base: any StoreWriting
    let session: SealingSession
    var reading: SealedReading { SealedReading(base: base, session: session) }

    init(base: any StoreWriting, session: SealingSession) {
        self.base = base
        self.session = session
    }

    var readThrough: any StoreReading { reading }

    @discardableResult
    func put(_ table: Table, _ key: [UInt8], _ value: [UInt8], mode: PutMode) throws -> Bool {
        switch table {
        case .documents:
            let row = RowKey(stored: key)
            let owner = Array(row.owner)
            let pseudonym = session.pseudonym(owner)
            if row.suffix.isEmpty, IdentifierRow.holds(row.partByte) {
                return try putRecord(row.partByte, [], value, mode: mode, pseudonym: pseudonym, owner: owner)
            }
            let sealedKey = session.sealedKey(key, separatorAt: row.ownerCount, ownerPseudonym: pseudonym)
            if row.part == .ledger, row.suffix.elementsEqual(LedgerBlock.tailSuffix) {
                if let put = try putLedgerTail(value, mode: mode, sealedKey: sealedKey, pseudonym: pseudonym, owner: owner) { return put }
            }
            // An edge goes in the identifier row when it is there already, or is new and the
            // row has room; an edge stored as a row of its own stays one.
            if row.part == .edge, !row.suffix.isEmpty {
                let peer = Array(row.suffix)
                let identifierRow = try reading.identifierRow(pseudonym)
                let inline = identifierRow?.record(DocumentPart.edge.rawValue, peer) != nil
                let room = (identifierRow?.edgeCount ?? 0) < IdentifierRow.inlineEdgeLimit
                if try inline || (room && base.get(.documents, sealedKey) == nil) {
                    return try putRecord(DocumentPart.edge.rawValue, peer, value, mode: mode, pseudonym: pseudonym, owner: owner)
                }
            }
            var plaintext = value
            if row.part == .edge {
                var writer = BinaryWriter(capacity: value.count + 40)
                writer.write(bytes: row.suffix)
                writer.write(raw: value)
                plaintext = writer.bytes
            }
            // `.insertOnly` is left to LMDB (no read first): a copy already stored wastes one seal,
            // and copies are rare. Its owner has a key already, so none is issued for it.
            let (id, dataKey) = try currentKey(pseudonym, owner: owner)
            return try base.put(.documents, sealedKey, try session.seal(plaintext, id, dataKey, associatedData: sealedKey), mode: mode)
        case .changes:
            return try base.put(table, key, try sealEntries(ChangeRecord.decode(value), table, key), mode: mode)
        case .ahead:
            return try base.put(table, key, try sealEntries([decode(ChangeEntry.self, value, table: table)], table, key), mode: mode)
        case .meta, .forget, .merkle:
            return try base.put(table, key, value, mode: mode)
        }
    }

    /// Puts an identifier's ledger tail block in its identifier row when it is at most
    /// `IdentifierRow.inlineLedgerTailLimit` bytes (a tail stored alone moves in), and returns
    /// whether it was put; or takes it out of the row when it has grown past that and returns
    /// nil: the caller stores it as a row of its own.
    private func putLedgerTail(_ value: [UInt8], mode: PutMode, sealedKey: [UInt8], pseudonym: [UInt8], owner: [UInt8]) throws -> Bool? {
        let tail = LedgerBlock.tailSuffix
        let identifierRow = try reading.identifierRow(pseudonym)
        let inline = identifierRow?.ledgerTail != nil
        // An insert only where a tail is kept already changes nothing, wherever the new one would go.
        if mode == .insertOnly, inline { return false }
        guard value.count <= IdentifierRow.inlineLedgerTailLimit else {
            if var identifierRow, inline {
                identifierRow.set(IdentifierRow.ledgerPart, tail, nil)
                session.keepIdentifierRow(pseudonym, identifierRow, changed: true)
            }
            return nil
        }
        if !inline {
            if mode == .insertOnly, try base.get(.documents, sealedKey) != nil { return false }
            try base.delete(.documents, sealedKey)
        }
        return try putRecord(IdentifierRow.ledgerPart, tail, value, mode: mode, pseudonym: pseudonym, owner: owner)
    }

    /// Puts a record in `pseudonym`'s identifier row, sealed with the row at commit (`finish`).
    private func putRecord(_ part: UInt8, _ suffix: [UInt8], _ value: [UInt8], mode: PutMode, pseudonym: [UInt8], owner: [UInt8]) throws -> Bool {
        precondition(mode != .append, "an append to an identifier row")
        _ = try currentKey(pseudonym, owner: owner)
        var identifierRow = try reading.identifierRow(pseudonym) ?? IdentifierRow(owner: owner)
        if mode == .insertOnly, identifierRow.record(part, suffix) != nil { return false }
        identifierRow.set(part, suffix, value)
        session.keepIdentifierRow(pseudonym, identifierRow, changed: true)
        return true
    }

    /// Each entry sealed as it is, without encoding the record and decoding it again (`put`).
    func putChanges(_ entries: [ChangeEntry], at key: [UInt8], mode: PutMode) throws {
        try base.put(.changes, key, try sealEntries(entries, .changes, key), mode: mode)
    }

    @discardableResult
    func delete(_ table: Table, _ key: [UInt8]) throws -> Bool {
        guard table == .documents else { return try base.delete(table, key) }
        let sealedKey = session.sealedKey(key)
        let pseudonym = Array(sealedKey.prefix(Sealing.pseudonymSize))
        session.deletedFrom.insert(pseudonym)
        if let row = RowKey(key), IdentifierRow.mayHold(row.partByte, row.suffix) {
            if var identifierRow = try reading.identifierRow(pseudonym), identifierRow.set(row.partByte, Array(row.suffix), nil) {
                session.keepIdentifierRow(pseudonym, identifierRow, changed: true)
                return true
            }
            // An index, head or view is never a row of its own; an edge or a ledger tail may be.
            guard !IdentifierRow.holds(row.partByte) else { return false }
        }
        return try base.delete(.documents, sealedKey)
    }

    /// Before commit: the identifier rows this transaction changed are sealed and written; then
    /// an owner row whose owner has nothing left, in it or beside it, is deleted, and its key
    /// retired — it sealed the owner's identifier, which must not outlive the owner's data.
    func finish() throws {
        for (pseudonym, row, deflated) in session.takeChangedIdentifierRows() {
            guard let row else { continue }
            let rowKey = pseudonym + [Sealing.ownerPart]
            let (id, key) = try currentKey(pseudonym, owner: row.owner)
            let plaintext = row.encoded()
            let stored = deflated ? IdentifierRow.deflated(plaintext) ?? plaintext : plaintext
            try base.put(.documents, rowKey, try session.sealIdentifierRow(stored, id, key, rowKey: rowKey), mode: .upsert)
        }
        for pseudonym in session.deletedFrom.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            let rowKey = pseudonym + [Sealing.ownerPart]
            var others = false
            try base.scan(.documents, from: rowKey + [0]) { key, _ in
                others = key.starts(with: pseudonym)
                return .stop
            }
            guard !others, try reading.identifierRow(pseudonym)?.isEmpty ?? true, let row = try base.get(.documents, rowKey) else { continue }
            let id = try decode(row, table: .documents) { try SealingSession.identifierRowKeyID($0).id }
            try base.delete(.documents, rowKey)
            session.setKeyInUse(pseudonym, nil)
            session.dropIdentifierRow(pseudonym)
            if !session.retired.contains(id) {
                session.retired.append(id)
                try base.put(.meta, Sealing.retiredPrefix + Self.idBytes(id), [], mode: .upsert)
            }
        }
    }

    private func sealEntries(_ entries: [ChangeEntry], _ table: Table, _ key: [UInt8]) throws -> [UInt8] {
        try session.sealEntries(entries, table: table, key: key) { pseudonym in
            guard let owner = session.owner(of: pseudonym) else { preconditionFailure("a pseudonym this transaction did not compute") }
            return try currentKey(pseudonym, owner: owner)
        }
    }

    /// The key `pseudonym`'s new rows are sealed with: the one its owner row was sealed with,
    /// or, for an owner without one (new, or erased in this transaction), a newly issued key,
    /// recorded by writing the owner row under it.
    private func currentKey(_ pseudonym: [UInt8], owner: [UInt8]) throws -> (id: DataKeyID, key: AESGCM.Key) {
        if let known = session.keyInUse(pseudonym) { return known }
        let rowKey = pseudonym + [Sealing.ownerPart]
        if let row = try base.get(.documents, rowKey) {
            let id = try decode(row, table: .documents) { try SealingSession.identifierRowKeyID($0).id }
            if let key = session.sealing.keys.key(for: id) {
                session.setKeyInUse(pseudonym, (id, key))
                return (id, key)
            }
        }
        let (id, key) = try session.sealing.keys.issue()
        session.issued.append(id)
        // Written now, not at commit: scans and erasures in this transaction find owners by these rows.
        let row = IdentifierRow(owner: owner)
        try base.put(.documents, rowKey, try session.sealIdentifierRow(row.encoded(), id, key, rowKey: rowKey), mode: .upsert)
        session.keepIdentifierRow(pseudonym, row, changed: false)
        session.setKeyInUse(pseudonym, (id, key))
        return (id, key)
    }

    /// Retires every key that sealed data of the erased `identifiers` (destroyed once the
    /// erasure commits) and seals again, under new keys, whatever of theirs survived the erasure
    /// (data newer than it): their rows, and their entries in the log and in `ahead`.
    func retireKeys(of identifiers: [Identifier]) throws {
        let pseudonyms = Set(identifiers.map { session.pseudonym($0.key) })
        var retired: Set<DataKeyID> = []
        // The owners of a log record's entries, and their keys, are readable without opening them.
        var records: [(Table, [UInt8], [UInt8])] = []
        for table in [Table.changes, .ahead] {
            try base.scan(table, from: []) { key, value in
                let owned = try Sealing.entryOwners(value).filter { pseudonyms.contains($0.owner) }
                guard !owned.isEmpty else { return .next }
                retired.formUnion(owned.map(\.key))
                records.append((table, key, try reading.get(table, key) ?? []))
                return .next
            }
        }
        var surviving: [([UInt8], [UInt8])] = []
        for identifier in identifiers {
            try reading.scan(.documents, prefix: documentPrefix(identifier.key)) { key, value in
                surviving.append((key, value))
                return .next
            }
            let pseudonym = session.pseudonym(identifier.key)
            var rows: [[UInt8]] = []
            try base.scan(.documents, from: pseudonym) { key, value in
                guard key.starts(with: pseudonym) else { return .stop }
                rows.append(key)
                retired.insert(try SealingSession.keyID(value).id)
                return .next
            }
            for row in rows { try base.delete(.documents, row) }
            session.setKeyInUse(pseudonym, nil)
            session.dropIdentifierRow(pseudonym)
        }
        for id in retired.sorted(by: { ($0.slot, $0.tag) < ($1.slot, $1.tag) }) {
            try base.put(.meta, Sealing.retiredPrefix + Self.idBytes(id), [], mode: .upsert)
        }
        session.retired += retired
        for (key, value) in surviving { try put(.documents, key, value, mode: .upsert) }
        for (table, key, plain) in records where !(table == .ahead && plain.isEmpty) { try put(table, key, plain, mode: .upsert) }
    }

    static func idBytes(_ id: DataKeyID) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: id.slot >> (24 - 8 * $0)) } + KeySlot.bigEndian(id.tag)
    }

    static func id(fromBytes bytes: ArraySlice<UInt8>) -> DataKeyID? {
        guard bytes.count == 12 else { return nil }
        let start = bytes.startIndex
        return DataKeyID(
            slot: bytes[start..<(start + 4)].reduce(0) { $0 << 8 | UInt32($1) }, tag: bytes[(start + 4)...].reduce(0) { $0 << 8 | UInt64($1) })
    }
}
