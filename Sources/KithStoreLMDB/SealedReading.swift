import KithCRDT
import KithProfile
import KithStore

/// Reads of sealed tables, giving the engine plain keys and values.
struct SealedReading: StoreReading {
    let base: any StoreReading
    let session: SealingSession

    func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? {
        switch table {
        case .documents:
            // A point read needs only the value: no owner row, no key to rebuild. The row is
            // opened where it lies in the map: its plaintext is the only copy made.
            return try session.withSealedKey(key) { sealedKey in
                if sealedKey.count == Sealing.pseudonymSize + 1, IdentifierRow.holds(sealedKey[Sealing.pseudonymSize]) {
                    return try record(sealedKey[Sealing.pseudonymSize], ofIdentifierRowAt: sealedKey)
                }
                if sealedKey.count > Sealing.pseudonymSize + 1, let row = RowKey(key), IdentifierRow.mayHold(row.partByte, row.suffix),
                    let inline = try identifierRow(Array(sealedKey.prefix(Sealing.pseudonymSize)))?.record(row.partByte, row.suffix)
                {
                    return inline
                }
                let opened = try base.withValue(.documents, sealedKey) { value in
                    guard let plain = try session.open(value, associatedData: sealedKey, table: .documents) else {
                        try checkErased(owner: sealedKey.prefix(Sealing.pseudonymSize))
                        return nil as [UInt8]?
                    }
                    return plain
                }
                guard let plain = opened ?? nil else { return nil }
                return sealedKey[Sealing.pseudonymSize] == DocumentPart.edge.rawValue ? try Self.splitEdge(plain).value : plain
            }
        case .changes:
            return try base.get(table, key).map { ChangeRecord.encode(try session.openEntries($0, table: table, key: key)) }
        case .ahead:
            guard let value = try base.get(table, key) else { return nil }
            return try session.openEntries(value, table: table, key: key).first.map { ProfileFormat.encode($0) }
        case .meta, .forget, .merkle:
            return try base.get(table, key)
        }
    }

    func scan(_ table: Table, from start: [UInt8], _ body: ([UInt8], [UInt8]) throws -> KithStore.ScanStep) throws {
        switch table {
        case .documents:
            // An identifier row comes before the owner's other rows and holds its first parts:
            // a start within them begins at the row, and skips what sorts before the start.
            let startKey = session.sealedKey(start)
            var sealedStart = startKey
            // The owner whose records may sort before the start (others follow it in pseudonym
            // order): its identifier row's records are compared with the start's plain key, its
            // other rows with the start's sealed key, as a scan from there would have found them.
            var startOwner: [UInt8]?
            // A ledger tail kept in an identifier row sorts after the owner's ledger rows: it is
            // given when the scan leaves the owner (or the table ends).
            var heldTail: (pseudonym: [UInt8], key: [UInt8], value: [UInt8])?
            if sealedStart.count > Sealing.pseudonymSize, sealedStart[Sealing.pseudonymSize] != Sealing.ownerPart {
                let (part, pseudonym) = (sealedStart[Sealing.pseudonymSize], Array(sealedStart.prefix(Sealing.pseudonymSize)))
                if IdentifierRow.holds(part) || part == DocumentPart.edge.rawValue {
                    startOwner = pseudonym
                    sealedStart = pseudonym + [Sealing.ownerPart]
                } else if part == IdentifierRow.ledgerPart, let row = try identifierRow(pseudonym), let tail = row.ledgerTail {
                    let tailKey = documentKey(row.owner, .ledger, LedgerBlock.tailSuffix)
                    if !tailKey.lexicographicallyPrecedes(start) { heldTail = (pseudonym, tailKey, tail) }
                }
            }
            var stopped = false
            func give(_ key: [UInt8], _ value: [UInt8]) throws -> KithStore.ScanStep {
                let step = try body(key, value)
                stopped = step == .stop
                return step
            }
            try base.scan(.documents, from: sealedStart) { key, value in
                if let tail = heldTail, !key.starts(with: tail.pseudonym) {
                    heldTail = nil
                    if try give(tail.key, tail.value) == .stop { return .stop }
                }
                guard key.count > Sealing.pseudonymSize else { return .next }
                guard key[Sealing.pseudonymSize] != Sealing.ownerPart else {
                    guard key.count == Sealing.pseudonymSize + 1 else { return .next }
                    let pseudonym = Array(key.prefix(Sealing.pseudonymSize))
                    guard let row = try identifierRow(pseudonym, stored: value) else { return .next }
                    for record in row.records {
                        let plainKey = documentPrefix(row.owner) + [record.part] + record.suffix
                        guard pseudonym != startOwner || !plainKey.lexicographicallyPrecedes(start) else { continue }
                        if record.part == IdentifierRow.ledgerPart {
                            heldTail = (pseudonym, plainKey, record.value)
                            continue
                        }
                        if try give(plainKey, record.value) == .stop { return .stop }
                    }
                    return .next
                }
                if let startOwner, key.starts(with: startOwner), key.lexicographicallyPrecedes(startKey) { return .next }
                guard let row = try openRow(key, value) else { return .next }
                return try give(row.key, row.value)
            }
            if !stopped, let tail = heldTail { _ = try body(tail.key, tail.value) }
        case .changes:
            try base.scan(table, from: start) { key, value in
                try body(key, ChangeRecord.encode(try session.openEntries(value, table: table, key: key)))
            }
        case .ahead:
            try base.scan(table, from: start) { key, value in
                guard let entry = try session.openEntries(value, table: table, key: key).first else { return .next }
                return try body(key, ProfileFormat.encode(entry))
            }
        case .meta, .forget, .merkle:
            try base.scan(table, from: start, body)
        }
    }

    /// For `documents`, within one part of one owner (`owner ‖ 0 ‖ part`), whose suffixes are
    /// stored plain (every part's but an edge's); the value is opened only when the key is
    /// within that part.
    func firstEntry(_ table: Table, from start: [UInt8], sharing prefix: [UInt8]) throws -> (key: [UInt8], value: [UInt8]?)? {
        guard table == .documents else { return try base.firstEntry(table, from: start, sharing: prefix) }
        guard let part = RowKey(prefix), part.suffix.isEmpty, part.part != .edge, !IdentifierRow.holds(part.partByte), start.starts(with: prefix)
        else {
            preconditionFailure("a sealed first entry asked for outside one part of one owner (prefix of \(prefix.count) bytes)")
        }
        // The part's suffixes are stored plain: the start's sealed key is the prefix's and the rest.
        let sealedPrefix = session.sealedKey(prefix)
        guard let found = try base.firstEntry(.documents, from: sealedPrefix + start[prefix.count...], sharing: sealedPrefix) else {
            // None stored at or after the start: the ledger tail an identifier row keeps sorts
            // after every row of the part.
            guard part.partByte == IdentifierRow.ledgerPart,
                let tail = try identifierRow(Array(sealedPrefix.prefix(Sealing.pseudonymSize)))?.ledgerTail
            else { return nil }
            let tailKey = prefix + LedgerBlock.tailSuffix
            return tailKey.lexicographicallyPrecedes(start) ? nil : (tailKey, tail)
        }
        guard let sealed = found.value else { return nil }
        let plain = try session.open(sealed, associatedData: found.key, table: .documents)
        if plain == nil { try checkErased(owner: found.key.prefix(Sealing.pseudonymSize)) }
        return (prefix + found.key[sealedPrefix.count...], plain)
    }

    func lastKey(_ table: Table) throws -> [UInt8]? {
        precondition(table != .documents, "documents are not in plain key order when sealed")
        return try base.lastKey(table)
    }

    func count(_ table: Table) throws -> Int {
        precondition(table != .documents, "sealed documents hold owner rows besides the engine's")
        return try base.count(table)
    }

    /// An erasure's forget keys name the pseudonyms directly: one owner row read each, instead
    /// of hashing every identifier held.
    func identifiers(withForgetKeys wanted: Set<[UInt8]>, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try wanted.sorted { $0.lexicographicallyPrecedes($1) }.compactMap { forgetKey in
            guard let owner = try ownerKey(Array(forgetKey.prefix(Sealing.pseudonymSize))), let identifier = Identifier(key: owner[...]),
                hasher.forgetKeyBytes(for: identifier) == forgetKey
            else { return nil }
            return identifier
        }
    }

    /// Sealed: the buckets one run each (`identifiers(inBucket:)`).
    func identifiers(inBuckets buckets: Range<Int>, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        try buckets.flatMap { try identifiers(inBucket: $0, hasher: hasher) }
    }

    /// Sealed: one run of the table from the position's pseudonym (the owner last done, whose
    /// rows are skipped) or its bucket's first, read by the owner rows, until `limit`.
    func identifiers(after position: BucketWalkPosition, before endBucket: Int, atMost limit: Int, hasher: HMACForgetKeyHasher) throws
        -> [(forgetKey: [UInt8], identifier: Identifier)]
    {
        guard position.bucket < endBucket, limit > 0 else { return [] }
        var found: [(forgetKey: [UInt8], identifier: Identifier)] = []
        let start = position.after.map { Array($0.prefix(Sealing.pseudonymSize)) } ?? DigestTreeShape.firstBytes(ofBucket: position.bucket)
        try base.scan(.documents, from: start) { key, _ in
            guard DigestTreeShape.bucket(of: key) < endBucket else { return .stop }
            guard key.count == Sealing.pseudonymSize + 1, key[Sealing.pseudonymSize] == Sealing.ownerPart,
                let owner = try ownerKey(Array(key.prefix(Sealing.pseudonymSize))), let identifier = Identifier(key: owner[...])
            else { return .next }
            let forgetKey = hasher.forgetKeyBytes(for: identifier)
            guard position.precedes(forgetKey) else { return .next }
            found.append((forgetKey, identifier))
            return found.count < limit ? .next : .stop
        }
        return found
    }

    /// Owners are in pseudonym order, and a pseudonym is a forget key's first bytes: a bucket's
    /// owners are one run of the table, read by their owner rows.
    func identifiers(inBucket bucket: Int, hasher: HMACForgetKeyHasher) throws -> [Identifier] {
        var identifiers: [Identifier] = []
        try base.scan(.documents, from: DigestTreeShape.firstBytes(ofBucket: bucket)) { key, _ in
            guard DigestTreeShape.bucket(of: key) == bucket else { return .stop }
            if key.count == Sealing.pseudonymSize + 1, key[Sealing.pseudonymSize] == Sealing.ownerPart,
                let owner = try ownerKey(Array(key.prefix(Sealing.pseudonymSize))), let identifier = Identifier(key: owner[...])
            {
                identifiers.append(identifier)
            }
            return .next
        }
        return identifiers
    }

    /// A row as the engine knows it, or nil when its key is destroyed.
    private func openRow(_ key: [UInt8], _ value: [UInt8]) throws -> (key: [UInt8], value: [UInt8])? {
        let pseudonym = Array(key.prefix(Sealing.pseudonymSize))
        guard let owner = try ownerKey(pseudonym) else { return nil }
        guard var plain = try session.open(value, associatedData: key, table: .documents) else {
            try checkErased(owner: pseudonym)
            return nil
        }
        let part = key[Sealing.pseudonymSize]
        var plainKey = documentPrefix(owner) + [part]
        if part == DocumentPart.edge.rawValue {
            let edge = try Self.splitEdge(plain)
            plainKey += edge.peer
            plain = edge.value
        } else {
            plainKey += key[(Sealing.pseudonymSize + 1)...]
        }
        return (plainKey, plain)
    }

    /// A row whose key is destroyed is an erased owner's, and its identifier row is sealed under
    /// a destroyed key too: an erasure deletes or seals again every row of the owner in one
    /// transaction, and each live row of an owner is sealed under the key its identifier row
    /// names. An identifier row that still opens means the row's key header was damaged: that
    /// is reported, not read as an erasure. (An identifier row's own header carries a check.)
    private func checkErased(owner pseudonym: some Collection<UInt8>) throws {
        guard let ownerRow = try base.get(.documents, Array(pseudonym) + [Sealing.ownerPart]) else { return }
        let id = try decode(ownerRow, table: .documents) { try SealingSession.identifierRowKeyID($0).id }
        guard session.sealing.keys.key(for: id) == nil else {
            throw StoreCorruption(
                table: Table.documents.name,
                underlying: BinaryDecodingError(.invalidValue, offset: 0, "a row's key header names no live key, and its owner's row does"))
        }
    }

    /// An edge's plaintext: the peer's identifier key, then the engine's value.
    static func splitEdge(_ plain: [UInt8]) throws -> (peer: ArraySlice<UInt8>, value: [UInt8]) {
        var reader = BinaryReader(plain)
        let peer = try reader.readBytes()
        return (peer, Array(plain[reader.offset...]))
    }

    /// The identifier key a pseudonym stands for: known from this transaction, or from its owner row.
    func ownerKey(_ pseudonym: [UInt8]) throws -> [UInt8]? {
        if let known = session.owner(of: pseudonym) { return known }
        guard let owner = try identifierRow(pseudonym)?.owner else { return nil }
        session.remember(owner: owner, of: pseudonym)
        return owner
    }

    /// `pseudonym`'s identifier row as this transaction sees it; nil when it has none, or when
    /// its key is destroyed (its owner was erased).
    func identifierRow(_ pseudonym: [UInt8]) throws -> IdentifierRow? {
        if let known = session.cachedIdentifierRow(pseudonym) { return known }
        let rowKey = pseudonym + [Sealing.ownerPart]
        let row = try rowKey.withUnsafeBytes { rowKeyBytes in
            try base.withValue(.documents, rowKeyBytes) { value in try openIdentifierRow(value, key: rowKeyBytes) } ?? nil
        }
        session.keepIdentifierRow(pseudonym, row, changed: false)
        return row
    }

    /// The record of `part` in the identifier row of the pseudonym `sealedKey` begins with: a
    /// write's from the rows it keeps, a read's from the row where it lies.
    private func record(_ part: UInt8, ofIdentifierRowAt sealedKey: UnsafeRawBufferPointer) throws -> [UInt8]? {
        if session.keepsIdentifierRows { return try identifierRow(Array(sealedKey.prefix(Sealing.pseudonymSize)))?.record(part) }
        // The row's key made on the stack, as the part's was.
        return try withUnsafeTemporaryAllocation(byteCount: Sealing.pseudonymSize + 1, alignment: 1) { rowKey in
            rowKey.copyMemory(from: UnsafeRawBufferPointer(rebasing: sealedKey.prefix(Sealing.pseudonymSize)))
            rowKey[Sealing.pseudonymSize] = Sealing.ownerPart
            let rowKeyBytes = UnsafeRawBufferPointer(rowKey)
            return try base.withValue(.documents, rowKeyBytes) { value in
                guard let plain = try session.openIdentifierRow(value, rowKey: rowKeyBytes) else { return nil }
                do {
                    return try IdentifierRow.record(part, in: plain)
                } catch {
                    throw StoreCorruption(table: Table.documents.name, underlying: error)
                }
            } ?? nil
        }
    }

    /// The same, for a row a scan has in hand.
    private func identifierRow(_ pseudonym: [UInt8], stored value: [UInt8]) throws -> IdentifierRow? {
        if let known = session.cachedIdentifierRow(pseudonym) { return known }
        let row = try (pseudonym + [Sealing.ownerPart]).withUnsafeBytes { key in
            try value.withUnsafeBytes { try openIdentifierRow($0, key: key) }
        }
        if let row { session.remember(owner: row.owner, of: pseudonym) }
        session.keepIdentifierRow(pseudonym, row, changed: false)
        return row
    }

    private func openIdentifierRow(_ sealed: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer) throws -> IdentifierRow? {
        guard let plain = try session.openIdentifierRow(sealed, rowKey: key) else { return nil }
        return try decode(plain, table: .documents) { try IdentifierRow(decoding: $0) }
    }
}
