import KithCRDT
import KithProfile
import Testing

@testable import KithStore

/// Ledger rows kept in blocks (`LedgerBlock`, `LedgerBlockTables`): the engine must read and
/// write exactly what separate rows would hold, whatever the order rows come in.
@Suite("Ledger blocks")
struct LedgerBlockTests {
    static func row(_ id: String, _ length: Int, _ fill: UInt8 = 3) -> LedgerBlock.Row {
        LedgerBlock.Row(suffix: Array(id.utf8), value: [3] + [UInt8](repeating: fill, count: length - 1))
    }

    @Test func aBlockReadsBackAsItWasWritten() throws {
        let block = LedgerBlock(rows: [Self.row("m-0001", 40), Self.row("m-0002", 1), Self.row("m-0010", 300), Self.row("x", 7)])
        let decoded = try LedgerBlock(stored: block.encoded(), keySuffix: Array("x".utf8)[...])
        #expect(decoded == block)
        #expect(block.encoded().count <= block.encodedCount)
        #expect(decoded.value(of: Array("m-0002".utf8)) == block.rows[1].value)
        #expect(decoded.value(of: Array("m-0003".utf8)) == nil)
    }

    @Test func aDeflatedBlockReadsBackAndDamageIsRefused() throws {
        let block = LedgerBlock(rows: (0..<8).map { Self.row(String(format: "m-%04d", $0), 60, 0x41) })
        let stored = block.encoded(compressed: true)
        #expect(stored.first == LedgerBlock.compressedTag)
        #expect(stored.count * 2 < block.encoded().count)
        #expect(try LedgerBlock(stored: stored, keySuffix: LedgerBlock.tailSuffix[...]) == block)
        for damaged in [
            Array(stored.dropLast(3)), stored + [1], [LedgerBlock.compressedTag, 0], [LedgerBlock.compressedTag, 0x80, 0x80, 0x80, 0x80, 0x08],
        ] {
            #expect(throws: BinaryDecodingError.self) { try LedgerBlock(stored: damaged, keySuffix: LedgerBlock.tailSuffix[...]) }
        }
        // Incompressible rows are stored plain.
        var random = SplitMix64(seed: 3)
        let noise = LedgerBlock(rows: [LedgerBlock.Row(suffix: [0x61], value: (0..<40).map { _ in UInt8(truncatingIfNeeded: random.next()) })])
        #expect(noise.encoded(compressed: true) == noise.encoded())
    }

    @Test func aRowStoredAloneReadsAsABlockOfOne() throws {
        let value = ProfileFormat.encode(LedgerRow.sample)
        let block = try LedgerBlock(stored: value, keySuffix: Array("m-7".utf8)[...])
        #expect(block.rows == [LedgerBlock.Row(suffix: Array("m-7".utf8), value: value)])
    }

    @Test func damagedBlocksAreRefused() throws {
        let block = LedgerBlock(rows: [Self.row("a", 10), Self.row("b", 10)])
        let encoded = block.encoded()
        // A row after the key the block is stored under would never be found by a lookup.
        #expect(throws: BinaryDecodingError.self) { try LedgerBlock(stored: encoded, keySuffix: Array("a".utf8)[...]) }
        #expect(throws: BinaryDecodingError.self) { try LedgerBlock(stored: Array(encoded.dropLast()), keySuffix: LedgerBlock.tailSuffix[...]) }
        #expect(throws: BinaryDecodingError.self) { try LedgerBlock(stored: encoded + [0], keySuffix: LedgerBlock.tailSuffix[...]) }
        #expect(throws: BinaryDecodingError.self) { try LedgerBlock(stored: [LedgerBlock.tag, 0], keySuffix: LedgerBlock.tailSuffix[...]) }
        // Rows out of order: the second shares nothing and sorts first.
        var swapped = BinaryWriter()
        swapped.write(byte: LedgerBlock.tag)
        swapped.write(count: 2)
        for id in ["b", "a"] {
            swapped.write(count: 0)
            swapped.write(bytes: Array(id.utf8))
            swapped.write(bytes: [3, 3])
        }
        #expect(throws: BinaryDecodingError.self) { try LedgerBlock(stored: swapped.bytes, keySuffix: LedgerBlock.tailSuffix[...]) }
        // A lone row under the tail key is not one an older store wrote.
        #expect(throws: BinaryDecodingError.self) { try LedgerBlock(stored: [3, 1], keySuffix: LedgerBlock.tailSuffix[...]) }
    }

    @Test func aFullTailBlockLeavesItsRowsBehindAndKeepsOnlyTheNewOne() {
        let rows = (0..<11).map { Self.row(String(format: "m-%04d", $0), 80) }
        let block = LedgerBlock(rows: rows)
        #expect(block.encodedCount > LedgerBlock.maximumBytes)
        let layout = block.layout(storedAt: LedgerBlock.tailSuffix, appended: true)
        #expect(layout.map(\.keySuffix) == [Array("m-0009".utf8), LedgerBlock.tailSuffix])
        #expect(layout.map(\.block.rows.count) == [10, 1])
    }

    @Test func aFullBlockSplitsInTheMiddleOfItsBytes() {
        let rows = (0..<12).map { Self.row(String(format: "m-%04d", $0), 90) }
        let layout = LedgerBlock(rows: rows).layout(storedAt: Array("m-0011".utf8), appended: false)
        #expect(layout.map(\.keySuffix) == [Array("m-0004".utf8), Array("m-0011".utf8)])
        #expect(layout.allSatisfy { $0.block.encodedCount <= LedgerBlock.maximumBytes })
        #expect(layout.flatMap(\.block.rows) == rows)
        // A block emptied goes; one whose last row went is stored under its new last row.
        #expect(LedgerBlock().layout(storedAt: Array("m-1".utf8), appended: false).isEmpty)
        #expect(LedgerBlock(rows: [Self.row("m-1", 4)]).layout(storedAt: Array("m-2".utf8), appended: false).map(\.keySuffix) == [Array("m-1".utf8)])
        // A row larger than a block stays whole, alone.
        let large = LedgerBlock(rows: [Self.row("a", 10), Self.row("b", 3_000), Self.row("c", 10)]).layout(storedAt: Array("c".utf8), appended: false)
        #expect(large.map(\.block.rows.count).reduce(0, +) == 3)
        #expect(large.contains { $0.block.rows == [Self.row("b", 3_000)] })
    }

    /// Random puts, inserts, deletes, reads and scans — some writing as they go — on blocks and
    /// on separate rows, with rows stored alone by an older store among them: every answer and
    /// the final rows must agree, and the blocks must stay within their size.
    @Test(arguments: 0..<24) func blocksHoldWhatSeparateRowsHold(seed: UInt64) throws {
        let stored = MemoryWriting(storage: MemoryTables(byteLimit: .max))
        _ = try Self.blocksHoldWhatSeparateRowsHold(seed: seed, blocks: LedgerBlockWriting(base: stored), stored: stored, ownersInKeyOrder: true)
    }

    /// The same over sealed LMDB tables, where an identifier's short ledger tail is kept in its
    /// identifier row: in the transaction, and read back after it.
    @Test(arguments: 0..<8) func sealedBlocksHoldWhatSeparateRowsHold(seed: UInt64) throws {
        let path = SealingTests.directory()
        defer { SealingTests.remove(path) }
        let store = try SealingTests.open(path)
        let expected = try store.write { writer in
            let blocks = try #require(writer as? LedgerBlockWriting)
            return try Self.blocksHoldWhatSeparateRowsHold(seed: seed, blocks: blocks, stored: blocks.base, ownersInKeyOrder: false)
        }
        let stored = try store.read { reader in
            var rows: [[UInt8]: [UInt8]] = [:]
            try reader.scan(.documents, from: []) { key, value in
                rows[key] = value
                return .next
            }
            return rows
        }
        #expect(stored == expected)
    }

    /// Random puts, inserts, deletes, reads, scans and batched writes through `blocks` (over
    /// `stored`) and on separate rows, compared step by step; returns what the separate rows
    /// hold. Sealed tables give owners in pseudonym order (`ownersInKeyOrder` false): their
    /// scans are compared within the start's owner.
    static func blocksHoldWhatSeparateRowsHold(
        seed: UInt64, blocks: LedgerBlockWriting, stored: any StoreWriting, ownersInKeyOrder: Bool
    ) throws -> [[UInt8]: [UInt8]] {
        var random = SplitMix64(seed: seed)
        let plain = MemoryWriting(storage: MemoryTables(byteLimit: .max))
        let owners: [[UInt8]] = [[1] + Array("u-1".utf8), [1] + Array("u-2".utf8), [3] + Array("a@b.c".utf8)]
        let sequential = seed % 2 == 0
        let messageIds = (0..<300).map { n in Array((sequential ? String(format: "m-%05d", n) : String(SplitMix64.mix(UInt64(n)), radix: 16)).utf8) }
        func ledgerKey() -> [UInt8] { documentKey(owners[Int(random.next() % 3)], .ledger, messageIds[Int(random.next() % 300)]) }
        func value() -> [UInt8] { [3] + (0..<Int(random.next() % 160)).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
        func everything(_ reading: any StoreReading) throws -> [[UInt8]: [UInt8]] {
            var rows: [[UInt8]: [UInt8]] = [:]
            try reading.scan(.documents, from: []) { key, value in
                rows[key] = value
                return .next
            }
            return rows
        }
        // Heads beside the ledgers, and rows an older store wrote alone.
        for owner in owners {
            for store in [plain, stored] as [any StoreWriting] { try store.put(.documents, documentKey(owner, .head), [3, 9], mode: .upsert) }
        }
        for _ in 0..<20 {
            let key = ledgerKey(), row = value()
            for store in [plain, stored] as [any StoreWriting] { try store.put(.documents, key, row, mode: .upsert) }
        }
        for step in 0..<600 {
            switch random.next() % 9 {
            case 0, 1, 2:
                let key = ledgerKey(), row = value()
                let mode: PutMode = random.next() % 2 == 0 ? .upsert : .insertOnly
                #expect(try blocks.put(.documents, key, row, mode: mode) == plain.put(.documents, key, row, mode: mode), "step \(step)")
            case 3:
                let key = ledgerKey()
                #expect(try blocks.delete(.documents, key) == plain.delete(.documents, key), "step \(step)")
            case 4:
                let key = ledgerKey()
                #expect(try blocks.get(.documents, key) == plain.get(.documents, key), "step \(step)")
            case 6:
                // Puts and deletes written in one call, across owners and blocks.
                var changes: [[UInt8]: [UInt8]?] = [:]
                for _ in 0..<Int(random.next() % 30) { changes[ledgerKey()] = random.next() % 3 == 0 ? nil : value() }
                if random.next() % 4 == 0 { changes[documentKey(owners[0], .head)] = [3, UInt8(step % 256)] }
                let list = changes.map { (key: $0.key, value: $0.value) }.shuffled(using: &random)
                try blocks.write(.documents, list)
                try plain.write(.documents, list)
                #expect(try everything(blocks) == everything(plain), "step \(step)")
            case 5:
                // A scan from anywhere, stopped after a few rows.
                let start = random.next() % 2 == 0 ? ledgerKey() : owners[Int(random.next() % 3)]
                let limit = Int(random.next() % 40) + 1
                let startOwner = documentPrefix(Array(RowKey(start)?.owner ?? start[...]))
                var seen: [[[UInt8]]] = [[], []]
                for (index, reading) in [blocks as any StoreReading, plain].enumerated() {
                    try reading.scan(.documents, from: start) { key, _ in
                        guard ownersInKeyOrder || key.starts(with: startOwner) else { return seen[index].isEmpty ? .next : .stop }
                        seen[index].append(key)
                        return seen[index].count < limit ? .next : .stop
                    }
                }
                #expect(seen[0] == seen[1], "step \(step)")
            default:
                // One owner's ledger scanned while rows at and after the cursor are rewritten
                // or deleted, as a sweep would (no inserts: the model's scan would not see them).
                let prefix = documentKey(owners[Int(random.next() % 3)], .ledger)
                let choices = (0..<8).map { _ in random.next() }
                var visited: [[[UInt8]]] = [[], []]
                for (index, writer) in [blocks as any StoreWriting, plain].enumerated() {
                    var count = 0
                    try writer.scan(.documents, prefix: prefix) { key, _ in
                        visited[index].append(key)
                        let choice = choices[count % choices.count]
                        count += 1
                        switch choice % 5 {
                        case 0: try writer.delete(.documents, key)
                        case 1: try writer.put(.documents, key, [3, UInt8(truncatingIfNeeded: choice)], mode: .upsert)
                        case 2:
                            // Large enough to split the block it is in.
                            try writer.put(.documents, key, [UInt8](repeating: 3, count: 700), mode: .upsert)
                        case 3:
                            // Another row of the owner, before or after the cursor.
                            try writer.delete(.documents, prefix + messageIds[Int(choice >> 8) % messageIds.count])
                        default: break
                        }
                        return .next
                    }
                }
                #expect(visited[0] == visited[1], "step \(step)")
            }
        }
        #expect(try everything(blocks) == everything(plain))
        // None is past its size unless one row is.
        try stored.scan(.documents, from: []) { key, value in
            guard let row = RowKey(key), row.part == .ledger else { return .next }
            let block = try LedgerBlock(stored: value, keySuffix: row.suffix)
            #expect(block.encodedCount <= LedgerBlock.maximumBytes || block.rows.count == 1)
            return .next
        }
        return try everything(plain)
    }
}

/// How full blocks stay: rows arriving in order or not, and rows deleted.
@Suite("Ledger blocks stay full")
struct LedgerBlockFillTests {
    static let owner: [UInt8] = [1] + Array("u-1".utf8)

    static func blocks(in storage: MemoryTables) throws -> [LedgerBlock] {
        var blocks: [LedgerBlock] = []
        try MemoryReading(storage: storage).scan(.documents, prefix: documentKey(owner, .ledger)) { key, value in
            blocks.append(try LedgerBlock(stored: value, keySuffix: RowKey(stored: key).suffix))
            return .next
        }
        return blocks
    }

    /// 200 rows of 80 bytes (97 in a block): in messageId order every block but the last is
    /// filled to `maximumBytes`; in random order splits leave blocks at least half full.
    @Test(arguments: [true, false]) func rowsFillTheirBlocks(inOrder: Bool) throws {
        let storage = MemoryTables(byteLimit: .max)
        let writer = LedgerBlockWriting(base: MemoryWriting(storage: storage))
        var order = Array(0..<200)
        var random = SplitMix64(seed: 7)
        if !inOrder { order.shuffle(using: &random) }
        for n in order {
            let inserted = try writer.put(
                .documents, documentKey(Self.owner, .ledger, Array(String(format: "m-%05d", n).utf8)), [UInt8](repeating: 3, count: 80),
                mode: .insertOnly)
            #expect(inserted)
        }
        let blocks = try Self.blocks(in: storage)
        #expect(blocks.reduce(0) { $0 + $1.rows.count } == 200)
        // In order, every block but the owner's last is cut off by an append and deflated; out
        // of order, blocks are split in the middle and stay plain (rows go on landing in them),
        // but for those an append happened to cut off.
        var tags: [UInt8] = []
        try MemoryReading(storage: storage).scan(.documents, prefix: documentKey(Self.owner, .ledger)) { _, value in
            tags.append(value[0])
            return .next
        }
        #expect(tags.last == LedgerBlock.tag)
        let deflated = tags.filter { $0 == LedgerBlock.compressedTag }.count
        #expect(inOrder ? deflated == tags.count - 1 : deflated * 4 < tags.count, "\(deflated) of \(tags.count) deflated")
        #expect(blocks.count <= (inOrder ? 21 : 40), "\(blocks.count) blocks")
    }

    /// Ingest does not deflate a block again: a deflated block that takes a new row is stored
    /// plain, and rows left it (a sweep, an erasure) leave it deflated.
    @Test func aDeflatedBlockThatTakesARowIsStoredPlain() throws {
        let storage = MemoryTables(byteLimit: .max)
        let writer = LedgerBlockWriting(base: MemoryWriting(storage: storage))
        let key = { (n: Int) in documentKey(Self.owner, .ledger, Array(String(format: "m-%05d", n * 2).utf8)) }
        let tags = {
            var tags: [UInt8] = []
            try MemoryReading(storage: storage).scan(.documents, prefix: documentKey(Self.owner, .ledger)) { _, value in
                tags.append(value[0])
                return .next
            }
            return tags
        }
        for n in 0..<30 { try writer.put(.documents, key(n), [UInt8](repeating: 3, count: 60), mode: .insertOnly) }
        let deflated = [UInt8](repeating: LedgerBlock.compressedTag, count: try tags().count - 1) + [LedgerBlock.tag]
        #expect(try tags() == deflated)
        // A row between the first block's rows: it splits that full block in the middle into
        // two plain ones; the others stay deflated.
        let between = documentKey(Self.owner, .ledger, Array("m-00003".utf8))
        #expect(try writer.put(.documents, between, [4], mode: .insertOnly))
        let split = [LedgerBlock.tag, LedgerBlock.tag] + deflated.dropFirst()
        #expect(try tags() == split)
        #expect(try writer.get(.documents, between) == [4])
        // A row inserted into the first of those (it has room) keeps it plain.
        #expect(try writer.put(.documents, documentKey(Self.owner, .ledger, Array("m-00001".utf8)), [4], mode: .insertOnly))
        #expect(try tags() == split)
        // A row deleted from a deflated block leaves it deflated.
        #expect(try writer.delete(.documents, key(20)))
        #expect(try tags() == split)
        #expect(try Self.blocks(in: storage).map(\.rows.count).reduce(0, +) == 31)
    }

    /// The sweep's deflation: every plain block of `mergingBytes` or more stored deflated (the
    /// last one too), the same rows in the same blocks; a second call finds nothing to do.
    @Test func theSweepDeflatesWhatIngestLeftPlain() throws {
        let storage = MemoryTables(byteLimit: .max)
        let writer = LedgerBlockWriting(base: MemoryWriting(storage: storage))
        var order = Array(0..<120)
        var random = SplitMix64(seed: 11)
        order.shuffle(using: &random)
        for n in order {
            try writer.put(
                .documents, documentKey(Self.owner, .ledger, Array(String(format: "m-%05d", n).utf8)), [UInt8](repeating: UInt8(n % 7), count: 70),
                mode: .insertOnly)
        }
        let stored = {
            var stored: [(key: [UInt8], value: [UInt8])] = []
            try MemoryReading(storage: storage).scan(.documents, prefix: documentKey(Self.owner, .ledger)) { key, value in
                stored.append((key, value))
                return .next
            }
            return stored
        }
        let rows = {
            var rows: [[UInt8]] = []
            try writer.scan(.documents, prefix: documentKey(Self.owner, .ledger)) { key, value in
                rows.append(key + value)
                return .next
            }
            return rows
        }
        let before = try stored()
        let rowsBefore = try rows()
        let eligible = before.filter { $0.value[0] == LedgerBlock.tag && $0.value.count >= LedgerBlock.mergingBytes }.count
        #expect(eligible > 2, "\(before.map { $0.value[0] })")
        #expect(try writer.deflateLedgerBlocks(of: Self.owner, atMost: 2) == 2)
        #expect(try writer.deflateLedgerBlocks(of: Self.owner, atMost: .max) == eligible - 2)
        let after = try stored()
        #expect(after.map(\.key) == before.map(\.key), "the same blocks")
        #expect(after.allSatisfy { $0.value[0] == LedgerBlock.compressedTag || $0.value.count < LedgerBlock.mergingBytes })
        #expect(after.last?.value[0] == LedgerBlock.compressedTag, "the last block too")
        #expect(after.map(\.value.count).reduce(0, +) < before.map(\.value.count).reduce(0, +))
        #expect(try rows() == rowsBefore)
        #expect(try writer.deflateLedgerBlocks(of: Self.owner, atMost: .max) == 0)
    }

    /// A block goes under its last messageId, so one too long for a key is refused up front,
    /// not when a later row splits the block it sits in.
    @Test func messageIdsTooLongForAKeyAreRefused() throws {
        let writer = LedgerBlockWriting(base: MemoryWriting(storage: MemoryTables(byteLimit: .max)))
        let longest = [UInt8](repeating: 0x61, count: LedgerBlock.maximumSuffixBytes)
        #expect(try writer.put(.documents, documentKey(Self.owner, .ledger, longest), [3], mode: .insertOnly))
        #expect(throws: LedgerBlock.MessageIdTooLong.self) {
            try writer.put(.documents, documentKey(Self.owner, .ledger, longest + [0x61]), [3], mode: .insertOnly)
        }
    }

    /// Deleting most of a block's rows makes it join the next block.
    @Test func aBlockLeftSmallJoinsTheNext() throws {
        let storage = MemoryTables(byteLimit: .max)
        let writer = LedgerBlockWriting(base: MemoryWriting(storage: storage))
        let key = { (n: Int) in documentKey(Self.owner, .ledger, Array(String(format: "m-%05d", n).utf8)) }
        for n in 0..<30 { try writer.put(.documents, key(n), [UInt8](repeating: 3, count: 80), mode: .upsert) }
        #expect(try Self.blocks(in: storage).map(\.rows.count) == [10, 10, 10])
        // Two rows left, but the next block is full: they stay.
        for n in 0..<8 { #expect(try writer.delete(.documents, key(n))) }
        #expect(try Self.blocks(in: storage).map(\.rows.count) == [2, 10, 10])
        // Blocks an append cut off were deflated, and stay so when rewritten.
        var tags: [UInt8] = []
        try MemoryReading(storage: storage).scan(.documents, prefix: documentKey(Self.owner, .ledger)) { _, value in
            tags.append(value[0])
            return .next
        }
        #expect(tags == [LedgerBlock.compressedTag, LedgerBlock.compressedTag, LedgerBlock.tag])
        for n in 10..<15 { #expect(try writer.delete(.documents, key(n))) }
        #expect(try Self.blocks(in: storage).map(\.rows.count) == [2, 5, 10])
        #expect(try writer.delete(.documents, key(8)))
        #expect(try Self.blocks(in: storage).map(\.rows.count) == [6, 10])
        #expect(try writer.get(.documents, key(9)) == [UInt8](repeating: 3, count: 80))
        #expect(try writer.get(.documents, key(0)) == nil)
    }
}

extension LedgerRow {
    fileprivate static var sample: LedgerRow {
        LedgerRow(entry: LedgerEntry(type: .track, name: "Order Completed", time: 1_700_000_000_000, revenueMicros: nil), event: nil, links: [])
    }
}
