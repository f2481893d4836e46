import KithCRDT
import KithProfile

/// The engine's tables with ledger rows kept in blocks (`LedgerBlock`): the engine reads and
/// writes `identifier key ‖ 0 ‖ ledger ‖ messageId` rows one by one, and this layer finds each
/// in its block, seals the block again when one of its rows changes, and gives scans the rows
/// in key order. Everything else passes through. It sits on the tables a store opens (sealed or
/// in memory), under the digest tree, so digests, comparisons and replication see rows, never
/// blocks: where a block splits depends on the order rows arrived, which replicas do not share.
enum LedgerBlocks {
    /// `key` read as a ledger row's (a messageId after the part), else nil.
    static func ledgerRow(_ table: Table, _ key: [UInt8]) -> RowKey? {
        guard table == .documents, let row = RowKey(key), row.part == .ledger, !row.suffix.isEmpty else { return nil }
        return row
    }

    /// The row's messageId, if a block may be stored under it (`LedgerBlock.maximumSuffixBytes`).
    static func storableSuffix(of row: RowKey) throws -> [UInt8] {
        guard row.suffix.count <= LedgerBlock.maximumSuffixBytes else { throw LedgerBlock.MessageIdTooLong(bytes: row.suffix.count) }
        return Array(row.suffix)
    }

    /// `owner ‖ 0 ‖ ledger`: what every row and block of the owner's ledger starts with.
    static func prefix(of row: RowKey) -> [UInt8] { Array(row.bytes[..<(row.ownerCount + 2)]) }

    /// The block that holds `row`, or would take it: the first stored at or after its key.
    static func block(for row: RowKey, in base: any StoreReading) throws -> (key: [UInt8], block: LedgerBlock, deflated: Bool)? {
        let prefix = prefix(of: row)
        guard let (key, value) = try base.firstEntry(.documents, from: row.bytes, sharing: prefix),
            let value  // nil: its owner was erased (a destroyed key)
        else { return nil }
        return (key, try decodeBlock(key, value, prefixCount: prefix.count), value.first == LedgerBlock.compressedTag)
    }

    static func decodeBlock(_ key: [UInt8], _ value: [UInt8], prefixCount: Int) throws -> LedgerBlock {
        try decoding(key) { try LedgerBlock(stored: value, keySuffix: key[prefixCount...]) }
    }

    /// `body`'s result, a block it cannot read reported as damage of the table.
    static func decoding<T>(_ key: [UInt8], _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as BinaryDecodingError {
            throw StoreCorruption(table: Table.documents.name, underlying: error)
        }
    }

    static func get(_ row: RowKey, in base: any StoreReading) throws -> [UInt8]? {
        try block(for: row, in: base)?.block.value(of: row.suffix)
    }

    /// The rows from the first key ≥ `start`, blocks opened into their rows. `writes` counts the
    /// blocks written so far: if the body wrote any, the scan seeks again after the row it was
    /// given (a block the body split or moved may now lie anywhere at or after the cursor).
    static func scan(
        _ base: any StoreReading, from start: [UInt8], writes: () -> Int, _ body: (_ key: [UInt8], _ value: [UInt8]) throws -> ScanStep
    ) throws {
        var from = start
        while true {
            var resumeAt: [UInt8]?
            try base.scan(.documents, from: from) { key, value in
                guard let row = ledgerRow(.documents, key) else { return try body(key, value) }
                let prefixCount = row.ownerCount + 2
                // Only the start's own block holds rows before it: a sealed store gives owners in
                // pseudonym order, where a later owner's plain keys may sort before the start.
                let startsHere = from.count > row.ownerCount && from.starts(with: key[...row.ownerCount])
                for stored in try decodeBlock(key, value, prefixCount: prefixCount).rows {
                    let rowKey = key[..<prefixCount] + stored.suffix
                    guard !(startsHere && rowKey.lexicographicallyPrecedes(from)) else { continue }
                    let before = writes()
                    if try body(Array(rowKey), stored.value) == .stop { return .stop }
                    if writes() != before {
                        resumeAt = Array(rowKey) + [0]
                        return .stop
                    }
                }
                return .next
            }
            guard let next = resumeAt else { return }
            from = next
        }
    }
}

/// The reads of both block layers: rows found in their blocks, everything else read through.
package protocol ReadingLedgerBlocks: ReadingThrough {
    /// Blocks written in this transaction so far (`LedgerBlocks.scan`; none when only reading).
    var blockWritesSoFar: Int { get }
}

extension ReadingLedgerBlocks {
    package func get(_ table: Table, _ key: [UInt8]) throws -> [UInt8]? {
        guard let row = LedgerBlocks.ledgerRow(table, key) else { return try readThrough.get(table, key) }
        return try LedgerBlocks.get(row, in: readThrough)
    }

    package func withValue<T>(_ table: Table, _ key: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        let bytes = Array(key)
        guard let row = LedgerBlocks.ledgerRow(table, bytes) else { return try readThrough.withValue(table, key, body) }
        return try LedgerBlocks.get(row, in: readThrough).map { try $0.withUnsafeBytes(body) }
    }

    package func scan(_ table: Table, from start: [UInt8], _ body: ([UInt8], [UInt8]) throws -> ScanStep) throws {
        guard table == .documents else { return try readThrough.scan(table, from: start, body) }
        try LedgerBlocks.scan(readThrough, from: start, writes: { blockWritesSoFar }, body)
    }

    package func firstEntry(_ table: Table, from start: [UInt8], sharing prefix: [UInt8]) throws -> (key: [UInt8], value: [UInt8]?)? {
        guard table == .documents else { return try readThrough.firstEntry(table, from: start, sharing: prefix) }
        return try firstEntryByScanning(self, table, from: start, sharing: prefix)
    }
}

/// Reads of tables whose ledger rows are in blocks.
package struct LedgerBlockReading: ReadingLedgerBlocks {
    package let readThrough: any StoreReading
    package var blockWritesSoFar: Int { 0 }

    package init(base: any StoreReading) { readThrough = base }
}

/// Writes of tables whose ledger rows are in blocks (reads as `LedgerBlockReading`).
package final class LedgerBlockWriting: StoreWriting, ReadingLedgerBlocks {
    package let base: any StoreWriting
    package private(set) var blockWritesSoFar = 0

    package init(base: any StoreWriting) { self.base = base }

    package var readThrough: any StoreReading { base }

    @discardableResult
    package func put(_ table: Table, _ key: [UInt8], _ value: [UInt8], mode: PutMode) throws -> Bool {
        guard let row = LedgerBlocks.ledgerRow(table, key) else { return try base.put(table, key, value, mode: mode) }
        precondition(mode != .append, "a ledger row appended: ledger rows are put or inserted")
        let suffix = try LedgerBlocks.storableSuffix(of: row)
        let prefix = LedgerBlocks.prefix(of: row)
        // The block that holds the row or would take it; nil: its owner was erased (a destroyed key).
        guard let (blockKey, stored) = try base.firstEntry(.documents, from: key, sharing: prefix), let stored else {
            try store(LedgerBlock(rows: [.init(suffix: suffix, value: value)]), of: row, replacing: nil, appended: true, deflated: false)
            return true
        }
        switch try LedgerBlocks.decoding(blockKey, { try LedgerBlock.inserting(suffix, value, intoEncoded: stored) }) {
        case .present where mode == .insertOnly:
            return false
        case .inserted(let bytes):
            try base.put(.documents, blockKey, bytes, mode: .upsert)
            blockWritesSoFar += 1
            return true
        case .present, .undecided:
            break
        }
        let found = (key: blockKey, block: try LedgerBlocks.decodeBlock(blockKey, stored, prefixCount: prefix.count))
        var block = found.block
        if let old = block.value(of: suffix) {
            guard mode == .upsert else { return false }
            guard old != value else { return true }
        }
        let isNew = block.set(suffix, value)
        // A deflated block that takes a new row is stored plain: rows arriving out of order
        // keep landing in the same blocks, and deflating each again would cost every such row
        // an inflate and a deflate (a fifth of a node's time under HTTP batches).
        try store(block, of: row, replacing: found.key, appended: isNew && block.rows.last?.suffix == suffix, deflated: false)
        return true
    }

    @discardableResult
    package func delete(_ table: Table, _ key: [UInt8]) throws -> Bool {
        guard let row = LedgerBlocks.ledgerRow(table, key) else { return try base.delete(table, key) }
        guard let found = try LedgerBlocks.block(for: row, in: base) else { return false }
        var block = found.block
        guard block.remove(row.suffix) else { return false }
        try store(block, of: row, replacing: found.key, appended: false, deflated: found.deflated)
        return true
    }

    /// Ledger rows in key order, each block opened, changed by every row that falls in it, and
    /// stored once; other rows one by one.
    package func write(_ table: Table, _ changes: [(key: [UInt8], value: [UInt8]?)]) throws {
        var rows: [(row: RowKey, value: [UInt8]?)] = []
        for (key, value) in changes {
            if let row = LedgerBlocks.ledgerRow(table, key) {
                rows.append((row, value))
            } else if let value {
                try base.put(table, key, value, mode: .upsert)
            } else {
                try base.delete(table, key)
            }
        }
        rows.sort { $0.row.bytes.lexicographicallyPrecedes($1.row.bytes) }
        var next = rows.startIndex
        while next < rows.endIndex {
            let first = rows[next].row
            guard let found = try LedgerBlocks.block(for: first, in: base) else {
                // No block at or after it: only a put has anything to do (a new tail block).
                if let value = rows[next].value { try put(.documents, first.bytes, value, mode: .upsert) }
                next += 1
                continue
            }
            let prefix = LedgerBlocks.prefix(of: first)
            var block = found.block
            while next < rows.endIndex, rows[next].row.bytes.starts(with: prefix), !found.key.lexicographicallyPrecedes(rows[next].row.bytes) {
                if let value = rows[next].value {
                    block.set(try LedgerBlocks.storableSuffix(of: rows[next].row), value)
                } else {
                    block.remove(rows[next].row.suffix)
                }
                next += 1
            }
            if block != found.block { try store(block, of: first, replacing: found.key, appended: false, deflated: found.deflated) }
        }
    }

    package func retireKeys(of identifiers: [Identifier]) throws { try base.retireKeys(of: identifiers) }

    package func putChanges(_ entries: [ChangeEntry], at key: [UInt8], mode: PutMode) throws {
        try base.putChanges(entries, at: key, mode: mode)
    }

    package func deflateIdentifierRow(of owner: [UInt8]) throws -> Bool { try base.deflateIdentifierRow(of: owner) }
    package func repack(from start: [UInt8], beforeBucket bucket: Int, atMost limit: Int) throws -> (rows: Int, next: [UInt8]?) {
        try base.repack(from: start, beforeBucket: bucket, atMost: limit)
    }

    /// Deflates the first `limit` blocks of `owner`'s ledger that ingest left plain, as
    /// `LedgerBlock.isDeflatedBySweep` decides; returns how many it stored again. Rows do not
    /// change: the same rows in the same blocks, fewer bytes.
    package func deflateLedgerBlocks(of owner: [UInt8], atMost limit: Int) throws -> Int {
        precondition(limit > 0, "deflating at most \(limit) blocks")
        let prefix = documentKey(owner, .ledger)
        // A tail kept with the identifier row is deflated with it, sharing its words.
        let tailKey = try base.keepsLedgerTailWithIdentifierRow(of: owner) ? prefix + LedgerBlock.tailSuffix : nil
        var plain: [(key: [UInt8], block: LedgerBlock)] = []
        try base.scan(.documents, prefix: prefix) { key, value in
            if key != tailKey, LedgerBlock.isDeflatedBySweep(stored: value) {
                plain.append((key, try LedgerBlocks.decodeBlock(key, value, prefixCount: prefix.count)))
            }
            return plain.count < limit ? .next : .stop
        }
        for (key, block) in plain { try base.put(.documents, key, block.encoded(compressed: true), mode: .upsert) }
        blockWritesSoFar += plain.count
        return plain.count
    }

    /// Stores `block`, changed, in place of the block at `old` (nil: a new tail block). A block
    /// that shrank below `LedgerBlock.mergingBytes` joins the owner's next block when both fit
    /// in one: deletes (sweeps, erasures) would otherwise leave blocks that cost a key and a
    /// seal for a row or two.
    ///
    /// Which blocks are deflated: what an append cuts off the last block (rows arriving in
    /// messageId order, which are seldom written again), and a deflated block that rows left
    /// (sweeps and erasures, `deflated` from the caller). Blocks made by splits in the middle,
    /// and deflated blocks that take a new row, are stored plain: rows arriving out of order
    /// (random messageIds, as Segment's libraries make them) go on landing in them, and each
    /// such row would inflate and deflate its block again.
    private func store(_ block: LedgerBlock, of row: RowKey, replacing old: [UInt8]?, appended: Bool, deflated: Bool) throws {
        let prefix = LedgerBlocks.prefix(of: row)
        var block = block
        var replaced = old.map { [$0] } ?? []
        var keySuffix = old.map { Array($0[prefix.count...]) } ?? LedgerBlock.tailSuffix
        var deflated = deflated || (appended && keySuffix == LedgerBlock.tailSuffix)
        if let old, !appended, keySuffix != LedgerBlock.tailSuffix, block.encodedCount < LedgerBlock.mergingBytes,
            let (nextKey, nextValue) = try base.firstEntry(.documents, from: old + [0], sharing: prefix), let nextValue
        {
            let next = try LedgerBlocks.decodeBlock(nextKey, nextValue, prefixCount: prefix.count)
            if let joined = block.joined(with: next) {
                block = joined
                deflated = deflated || nextValue.first == LedgerBlock.compressedTag
                replaced.append(nextKey)
                keySuffix = Array(nextKey[prefix.count...])
            }
        }
        let layout = block.layout(storedAt: keySuffix, appended: appended)
        let keys = layout.map { prefix + $0.keySuffix }
        for key in replaced where !keys.contains(key) { try base.delete(.documents, key) }
        for (key, part) in zip(keys, layout) {
            let compressed = deflated && part.keySuffix != LedgerBlock.tailSuffix
            try base.put(.documents, key, part.block.encoded(compressed: compressed), mode: .upsert)
        }
        blockWritesSoFar += 1
    }
}
