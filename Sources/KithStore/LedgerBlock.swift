import KithCRDT
import KithCompression
import KithProfile

/// A run of one identifier's ledger rows stored as one value of `documents` (docs/storage.md,
/// "Ledger blocks"). A row of its own cost a key, a seal and LMDB's node header — 73 bytes
/// beside a median of 80 of row — so an identifier's rows are kept together, a block each run
/// of about `maximumBytes`, and the engine still reads and writes them one by one
/// (`LedgerBlockTables`).
///
/// A block is stored under `identifier key ‖ 0 ‖ ledger ‖ s`, where `s` is the messageId of its
/// last row, except the identifier's last block, stored under `tailSuffix` (no messageId is that
/// byte: messageIds are UTF-8). Blocks partition the messageIds: the block holding a messageId,
/// or the one it would go into, is the first stored at or after it. So every lookup is one
/// forward seek, and rows arriving in messageId order land in the tail block.
///
/// A value that does not start with `tag` is one row as stores before blocks wrote it
/// (`ProfileFormat`'s version byte first), stored under its own messageId: a block of one.
package struct LedgerBlock: Equatable, Sendable {
    /// A ledger row whose messageId is longer than `maximumSuffixBytes`, refused.
    package struct MessageIdTooLong: Error, CustomStringConvertible {
        package let bytes: Int
        package var description: String { "a messageId of \(bytes) bytes (at most \(LedgerBlock.maximumSuffixBytes) are stored)" }
    }

    /// The first byte of a block's encoding; never a `ProfileFormat` version.
    package static let tag: UInt8 = 0xB1
    /// The first byte of a block deflated (`dictionary`): then the length of the encoding
    /// after its tag, and that encoding deflated (level 1: as small as level 6 within 3 % on
    /// the bench store's blocks). Which blocks are stored so: `LedgerBlockWriting.store`.
    package static let compressedTag: UInt8 = 0xB2
    /// The most an encoding may say it inflates to: far above any block (a block past
    /// `maximumBytes` holds one row, and a row is a message's), far below what would hurt.
    static let largestInflated = 1 << 24
    /// The key suffix of an identifier's last block.
    package static let tailSuffix: [UInt8] = [0xFF]
    /// A block that grows past this many encoded bytes is split. Blocks of a kilobyte keep
    /// the key, seal and node header under a tenth of what they hold, keep four blocks to a
    /// page, and cost a write about a kilobyte to open and seal again.
    package static let maximumBytes = 1_024

    /// The longest messageId a ledger row may have: a block is stored under its last one, and
    /// that key must fit LMDB's limit (511 bytes) once sealed (a 16-byte pseudonym and the part
    /// byte before it). The API takes messageIds of at most 200 bytes.
    package static let maximumSuffixBytes = 494

    /// A block changed to fewer bytes than this joins the next one, if the two fit in one.
    package static let mergingBytes = maximumBytes / 4

    /// Whether the background sweep deflates the block stored as `stored`: a plain block (not
    /// a lone row of an older store, not one deflated already) of at least `mergingBytes` (less
    /// gives deflate too little to work with). Ingest leaves such blocks plain, since rows keep
    /// landing in them (`LedgerBlockWriting.put`); the sweep passes once an interval, so a
    /// block written again costs one inflate, not a deflate per row. Identifiers' last blocks
    /// too: with a few messages each, most customers' rows are all in their last block.
    package static func isDeflatedBySweep(stored: [UInt8]) -> Bool {
        stored.first == tag && stored.count >= mergingBytes
    }

    package struct Row: Equatable, Sendable {
        /// The messageId's bytes (the logical row key's suffix).
        package var suffix: [UInt8]
        package var value: [UInt8]

        package init(suffix: [UInt8], value: [UInt8]) {
            self.suffix = suffix
            self.value = value
        }
    }

    /// In ascending suffix order, no suffix twice, none empty.
    package private(set) var rows: [Row]

    package init(rows: [Row] = []) {
        for (earlier, later) in zip(rows, rows.dropFirst()) {
            precondition(
                earlier.suffix.lexicographicallyPrecedes(later.suffix), "ledger block rows out of order: \(earlier.suffix) then \(later.suffix)")
        }
        precondition(!rows.contains { $0.suffix.isEmpty }, "a ledger block row without a messageId")
        self.rows = rows
    }

    /// The block stored under key suffix `keySuffix` with value `stored` (a block, or one row as
    /// stores before blocks wrote it). Checks what lookups rely on: rows in ascending order, and
    /// every row at or before the key it is stored under.
    package init(stored: [UInt8], keySuffix: ArraySlice<UInt8>) throws {
        let stored = stored.first == Self.compressedTag ? try Self.inflated(stored) : stored
        guard stored.first == Self.tag else {
            guard !keySuffix.isEmpty, keySuffix.elementsEqual(Self.tailSuffix) == false else {
                throw BinaryDecodingError(.invalidValue, offset: 0, "a ledger row under \(keySuffix.count == 0 ? "no messageId" : "the tail key")")
            }
            rows = [Row(suffix: Array(keySuffix), value: stored)]
            return
        }
        var rows: [Row] = []
        let last = try Self.walk(stored) { _, suffix, _, value in
            rows.append(Row(suffix: suffix, value: Array(stored[value])))
            return true
        }
        if !keySuffix.elementsEqual(Self.tailSuffix), keySuffix.lexicographicallyPrecedes(last) {
            throw BinaryDecodingError(.invalidValue, offset: 0, "a ledger block holding rows after the key it is stored under")
        }
        self.rows = rows
    }

    /// Walks a plain block's encoding, checking what lookups rely on (rows there, each messageId
    /// sharing no more than the previous one has, in ascending order, nothing after the last),
    /// giving `body` each row's start, messageId, where its value's length starts and the
    /// value's bytes, until it says false. Returns the last row's messageId walked.
    private static func walk(
        _ stored: [UInt8], _ body: (_ start: Int, _ suffix: [UInt8], _ valueStart: Int, _ value: Range<Int>) throws -> Bool
    ) throws -> [UInt8] {
        var reader = BinaryReader(stored, at: 1)
        let count = try reader.readCount(minimumItemSize: 3)
        guard count > 0 else { throw BinaryDecodingError(.invalidValue, offset: 1, "an empty ledger block") }
        var suffix: [UInt8] = []
        for index in 0..<count {
            let start = reader.offset
            let shared = Int(try reader.readVarint())
            let rest = try reader.readBytesRange()
            guard shared <= suffix.count, shared + rest.count > 0 else {
                throw BinaryDecodingError(.invalidValue, offset: start, "a ledger block row sharing \(shared) bytes of \(suffix.count)")
            }
            let previous = suffix
            suffix.removeLast(suffix.count - shared)
            suffix.append(contentsOf: stored[rest])
            guard index == 0 || previous.lexicographicallyPrecedes(suffix) else {
                throw BinaryDecodingError(.invalidValue, offset: start, "ledger block rows out of order")
            }
            let valueStart = reader.offset
            let value = try reader.readBytesRange()
            guard try body(start, suffix, valueStart, value) else { return suffix }
        }
        try reader.expectEnd()
        return suffix
    }

    /// The encoding: `tag`, the row count, then each row as the bytes its messageId shares with
    /// the previous one's, the rest of it, and the value.
    package func encoded() -> [UInt8] {
        var writer = BinaryWriter(capacity: encodedCount)
        writer.write(byte: Self.tag)
        writer.write(count: rows.count)
        var previous: [UInt8] = []
        for row in rows {
            Self.writeRow(row.suffix, row.value, after: previous, into: &writer)
            previous = row.suffix
        }
        return writer.bytes
    }

    /// One row of the encoding: the bytes its messageId shares with `previous`'s (the row before
    /// it), the rest of the messageId, and the value.
    private static func writeRow(_ suffix: [UInt8], _ value: [UInt8], after previous: [UInt8], into writer: inout BinaryWriter) {
        let shared = sharedCount(previous, suffix)
        writer.write(count: shared)
        writer.write(bytes: suffix[shared...])
        writer.write(bytes: value)
    }

    private static func sharedCount(_ one: [UInt8], _ other: [UInt8]) -> Int { zip(one, other).prefix { $0 == $1 }.count }

    /// `encoded()`, deflated when `compressed` and that is smaller.
    package func encoded(compressed: Bool) -> [UInt8] {
        let plain = encoded()
        guard compressed else { return plain }
        let body = Array(plain[1...])
        var writer = BinaryWriter(capacity: body.count / 2 + 8)
        writer.write(byte: Self.compressedTag)
        writer.write(count: body.count)
        writer.write(raw: RawDeflate.compress(body, dictionary: Self.dictionary, level: 1))
        return writer.bytes.count < plain.count ? writer.bytes : plain
    }

    /// A deflated block's plain encoding.
    private static func inflated(_ stored: [UInt8]) throws -> [UInt8] {
        var reader = BinaryReader(stored, at: 1)
        let size = try reader.readVarint()
        guard size > 0, size <= UInt64(largestInflated) else {
            throw BinaryDecodingError(.invalidValue, offset: 1, "a deflated ledger block of \(size) bytes")
        }
        do {
            return [tag] + (try RawDeflate.decompress(Array(stored[reader.offset...]), dictionary: dictionary, size: Int(size)))
        } catch {
            throw BinaryDecodingError(.invalidValue, offset: reader.offset, "a deflated ledger block: \(error)")
        }
    }

    /// At most the length of `encoded()` (its messageIds counted whole): what splitting goes by,
    /// so that where a block splits does not depend on its neighbours' messageIds.
    package var encodedCount: Int { 1 + 5 + rows.reduce(0) { $0 + Self.rowBytes($1) } }

    private static func rowBytes(_ row: Row) -> Int { rowBytes(suffixCount: row.suffix.count, valueCount: row.value.count) }

    /// A row's bytes at most: the shared count, the messageId's length and the value's, each a
    /// varint of up to 5 bytes, and the bytes themselves.
    private static func rowBytes(suffixCount: Int, valueCount: Int) -> Int { 1 + 5 + suffixCount + 5 + valueCount }

    /// What `inserting` found.
    package enum Insertion: Equatable {
        /// The block holds the row already.
        case present
        /// The block's encoding with the row in its place.
        case inserted([UInt8])
        /// Not decided from the bytes: the block is deflated, or too full to take the row.
        case undecided
    }

    /// The plain block `stored` with the row `suffix` inserted in its place, written without
    /// decoding the block into rows: a new message's row goes into its identifier's block for
    /// the cost of a walk and a copy. Only the row after the new one is written again (the bytes
    /// of its messageId it shares with the previous row change). `.undecided` when the block is
    /// deflated or the row would take it past `maximumBytes` (`encodedCount`, as splitting
    /// counts): `set` and `layout` decide then. A block of 127 rows or more is left to them too
    /// (its count takes another byte).
    package static func inserting(_ suffix: [UInt8], _ value: [UInt8], intoEncoded stored: [UInt8]) throws -> Insertion {
        guard stored.count >= 2, stored[0] == tag, stored[1] < 0x7F, !suffix.isEmpty else { return .undecided }
        var estimate = 6 + rowBytes(suffixCount: suffix.count, valueCount: value.count)
        var present = false
        var previous: [UInt8] = []
        // Where the row after the new one starts, its messageId, and where its value starts.
        var following: (start: Int, suffix: [UInt8], valueStart: Int)?
        var before: [UInt8] = []
        let last = try walk(stored) { start, current, valueStart, valueRange in
            estimate += rowBytes(suffixCount: current.count, valueCount: valueRange.count)
            if following == nil {
                if current == suffix {
                    present = true
                    return false
                }
                if suffix.lexicographicallyPrecedes(current) {
                    following = (start, current, valueStart)
                    before = previous
                }
                previous = current
            }
            return true
        }
        if present { return .present }
        guard estimate <= maximumBytes else { return .undecided }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(stored.count + suffix.count + value.count + 8)
        var row = BinaryWriter(capacity: suffix.count + value.count + 8)
        writeRow(suffix, value, after: following == nil ? last : before, into: &row)
        if let following {
            // The following row's messageId against the new one; its value stays where it was.
            let next = sharedCount(suffix, following.suffix)
            row.write(count: next)
            row.write(bytes: following.suffix[next...])
            bytes.append(contentsOf: stored[..<following.start])
            bytes.append(contentsOf: row.bytes)
            bytes.append(contentsOf: stored[following.valueStart...])
        } else {
            bytes.append(contentsOf: stored)
            bytes.append(contentsOf: row.bytes)
        }
        bytes[1] += 1
        return .inserted(bytes)
    }

    /// Where `suffix` is, or where it would go.
    package func position(of suffix: some Collection<UInt8>) -> (index: Int, found: Bool) {
        var low = 0, high = rows.count
        while low < high {
            let mid = (low + high) / 2
            if rows[mid].suffix.lexicographicallyPrecedes(suffix) { low = mid + 1 } else { high = mid }
        }
        return (low, low < rows.count && rows[low].suffix.elementsEqual(suffix))
    }

    package func value(of suffix: some Collection<UInt8>) -> [UInt8]? {
        let place = position(of: suffix)
        return place.found ? rows[place.index].value : nil
    }

    /// Sets the row `suffix`; returns whether it was new.
    @discardableResult
    package mutating func set(_ suffix: [UInt8], _ value: [UInt8]) -> Bool {
        precondition(!suffix.isEmpty, "a ledger row without a messageId")
        let place = position(of: suffix)
        if place.found {
            rows[place.index].value = value
            return false
        }
        rows.insert(Row(suffix: suffix, value: value), at: place.index)
        return true
    }

    /// Removes the row `suffix`; returns whether there was one.
    @discardableResult
    package mutating func remove(_ suffix: some Collection<UInt8>) -> Bool {
        let place = position(of: suffix)
        guard place.found else { return false }
        rows.remove(at: place.index)
        return true
    }

    /// This block's rows and then `next`'s, as one block, if it stays within `maximumBytes`.
    package func joined(with next: LedgerBlock) -> LedgerBlock? {
        guard encodedCount + next.encodedCount - 6 <= Self.maximumBytes else { return nil }
        return LedgerBlock(rows: rows + next.rows)
    }

    /// The blocks to store in place of this one, stored under `keySuffix`, after a change, each
    /// with the suffix it goes under; none when it holds no rows. A block past `maximumBytes` is
    /// cut in two — before its last row when that row was just `appended` (rows arriving in
    /// messageId order then leave full blocks behind), else in the middle of its bytes — and
    /// again while a part is too large and has two rows. Every block but the last goes under its
    /// last messageId; the last keeps the tail key if the block had it, else goes under its own
    /// last messageId too.
    package func layout(storedAt keySuffix: [UInt8], appended: Bool) -> [(keySuffix: [UInt8], block: LedgerBlock)] {
        var parts = split(rows[...], appended: appended)
        guard !parts.isEmpty else { return [] }
        let isTail = keySuffix == Self.tailSuffix
        var layout: [(keySuffix: [UInt8], block: LedgerBlock)] = []
        let last = parts.removeLast()
        for part in parts { layout.append((part.last!.suffix, LedgerBlock(rows: Array(part)))) }
        layout.append((isTail ? Self.tailSuffix : last.last!.suffix, LedgerBlock(rows: Array(last))))
        return layout
    }

    private func split(_ rows: ArraySlice<Row>, appended: Bool) -> [ArraySlice<Row>] {
        guard !rows.isEmpty else { return [] }
        let bytes = rows.reduce(6) { $0 + Self.rowBytes($1) }
        guard bytes > Self.maximumBytes, rows.count > 1 else { return [rows] }
        var cut = rows.endIndex - 1
        if !appended {
            var before = 6
            cut = rows.startIndex
            while cut < rows.endIndex - 1, before + Self.rowBytes(rows[cut]) <= bytes / 2 {
                before += Self.rowBytes(rows[cut])
                cut += 1
            }
            cut = max(cut, rows.startIndex + 1)
        }
        return split(rows[..<cut], appended: false) + split(rows[cut...], appended: false)
    }
}
