import KithCRDT
import KithCompression
import KithStore

/// The row `pseudonym ‖ 0` of sealed `documents`: the identifier's key, and the engine's records
/// of which an identifier has at most one — its index, head and view — sealed together, with up
/// to `inlineEdgeLimit` of its edges and, while it is short, the last block of its ledger.
///
/// Each of those was a row of its own (sealed layout 1), and under churn, where most customers
/// have two or three messages, rows like these were most of the store: every row pays its key
/// (17 bytes, 33 for an edge), its seal (key id, nonce and tag, about 39) and LMDB's node (10).
/// One row for all of them pays that once (docs/storage.md, "Where the bytes go"); a message,
/// which changes its subject's head and its profile's view, seals one row instead of two.
/// Edges past the limit stay rows of their own (`pseudonym ‖ 4 ‖ peer pseudonym`), so an
/// identifier linked to thousands does not seal them all whenever it changes. An identifier's
/// last ledger block (`LedgerBlock.tailSuffix`) is here while its encoding is at most
/// `inlineLedgerTailLimit` bytes: under churn most customers have one block, which then costs
/// no key, seal or node of its own, and deflates with the recent events of the head and view,
/// which repeat its newest rows. A message changes its subject's head and that block: one seal.
///
/// Plaintext: `0 ‖ bytes(identifier key) ‖ record*`, a record `part ‖ bytes(value)` for the index,
/// head, view and ledger tail (whose suffix, the tail's, is not written), `4 ‖ bytes(peer's
/// identifier key) ‖ bytes(value)` for an edge, in plain key order (part, then peer). A layout-1 owner row is the identifier key alone, whose first byte
/// (the identifier's kind) is never 0: that is how `init(decoding:)` reads both, which the move
/// from layout 1 needs. The retention sweep stores a row deflated (`deflated`): `0 ‖ 0 ‖
/// varint(size) ‖ raw deflate` with the ledger blocks' dictionary — an owner's key is never
/// empty, so no plain row starts `0 ‖ 0`. Ingest writes rows plain, as it does ledger blocks.
struct IdentifierRow: Equatable {
    struct Record: Equatable {
        let part: UInt8
        /// The peer's identifier key for an edge; empty for the others.
        let suffix: [UInt8]
        var value: [UInt8]

        /// Plain key order within one owner.
        func precedes(_ part: UInt8, _ suffix: some Collection<UInt8>) -> Bool {
            self.part != part ? self.part < part : self.suffix.lexicographicallyPrecedes(suffix)
        }
    }

    /// The identifier's key.
    let owner: [UInt8]
    /// The records this row holds, in plain key order.
    private(set) var records: [Record] = []

    /// Parts of which an identifier has at most one, always kept in this row.
    static let heldParts: Set<UInt8> = [DocumentPart.index.rawValue, DocumentPart.head.rawValue, DocumentPart.view.rawValue]
    /// How many of an identifier's edges this row keeps; the rest are rows of their own.
    static let inlineEdgeLimit = 8

    /// The longest ledger tail this row keeps; a longer one is a row of its own, until it is
    /// short again. Reads of the view open the whole row, so a long tail would slow them.
    static let inlineLedgerTailLimit = 512

    static func holds(_ part: UInt8) -> Bool { heldParts.contains(part) }

    /// Whether a record of `part` with `suffix` may be kept in the row: a held part (no suffix),
    /// an edge (a peer's key), or the ledger's tail block.
    static func mayHold(_ part: UInt8, _ suffix: some Collection<UInt8>) -> Bool {
        switch part {
        case edgePart: !suffix.isEmpty
        case ledgerPart: suffix.elementsEqual(LedgerBlock.tailSuffix)
        default: holds(part) && suffix.isEmpty
        }
    }

    private static let formatByte: UInt8 = 0
    private static let edgePart = DocumentPart.edge.rawValue
    static let ledgerPart = DocumentPart.ledger.rawValue

    /// Whether `plaintext` is an owner row of sealed layout 1: the identifier key alone.
    static func isSeparateRowsOwner(_ plaintext: [UInt8]) -> Bool { plaintext.first.map { $0 != formatByte } ?? false }

    init(owner: [UInt8]) {
        precondition(owner.first.map { $0 != Self.formatByte } ?? false, "an identifier key of \(owner.count) bytes starting with 0")
        self.owner = owner
    }

    init(decoding plaintext: [UInt8]) throws {
        var records: [Record] = []
        owner = Array(
            try Self.visit(plaintext) { part, suffix, value in
                records.append(Record(part: part, suffix: Array(suffix), value: Array(value)))
                return true
            })
        self.records = records
    }

    /// The row's plaintext stored deflated, when that is shorter (nil when it is not, or the row
    /// is too short to gain: under `deflatedFrom` bytes).
    static func deflated(_ plaintext: [UInt8]) -> [UInt8]? {
        guard plaintext.count >= deflatedFrom, plaintext.first == formatByte, !isDeflated(plaintext) else { return nil }
        var writer = BinaryWriter(capacity: plaintext.count / 2 + 8)
        writer.write(byte: formatByte)
        writer.write(byte: deflatedMarker)
        writer.write(varint: UInt64(plaintext.count))
        writer.write(raw: RawDeflate.compress(plaintext, dictionary: LedgerBlock.dictionary, level: 1))
        return writer.bytes.count < plaintext.count ? writer.bytes : nil
    }

    static let deflatedFrom = 64
    private static let deflatedMarker: UInt8 = 0
    /// A row is never larger than an LMDB value may be; a size past this is damage.
    private static let largestRow = 1 << 28

    static func isDeflated(_ plaintext: [UInt8]) -> Bool {
        plaintext.count >= 2 && plaintext[0] == formatByte && plaintext[1] == deflatedMarker
    }

    /// A row's plaintext as `visit` reads it: inflated when the sweep deflated it.
    private static func inflatedIfDeflated(_ plaintext: consuming [UInt8]) throws -> [UInt8] {
        guard isDeflated(plaintext) else { return plaintext }
        var reader = BinaryReader(copy plaintext, at: 2)
        let size = try reader.readVarint()
        guard size <= largestRow else { throw BinaryDecodingError(.invalidValue, offset: 2, "deflated identifier row of \(size) bytes") }
        let inflated = try RawDeflate.decompress(Array(plaintext[reader.offset...]), dictionary: LedgerBlock.dictionary, size: Int(size))
        guard inflated.first == formatByte, !isDeflated(inflated) else {
            throw BinaryDecodingError(.invalidValue, offset: 2, "a deflated identifier row holding no plain row")
        }
        return inflated
    }

    /// The record of held part `part` in a row's plaintext, without decoding the rest into a
    /// row (a point read wants one record): the plaintext cut down to it in place, so the read
    /// allocates nothing beyond what opening the row did.
    static func record(_ part: UInt8, in plaintext: consuming [UInt8]) throws -> [UInt8]? {
        precondition(holds(part), "part \(part) read where it lies in an identifier row")
        var plaintext = try inflatedIfDeflated(plaintext)
        guard let range = try recordRange(part, in: plaintext) else { return nil }
        plaintext.removeSubrange(range.upperBound...)
        plaintext.removeSubrange(..<range.lowerBound)
        return plaintext
    }

    private static func recordRange(_ part: UInt8, in plaintext: [UInt8]) throws -> Range<Int>? {
        var found: Range<Int>?
        _ = try visit(plaintext) { recordPart, _, value in
            if recordPart == part { found = value.indices }
            return recordPart < part
        }
        return found
    }

    /// Reads a row's plaintext (either form), checking it: gives `body` each record in order
    /// while it says to go on, and returns the owner's key.
    private static func visit(
        _ stored: [UInt8], _ body: (UInt8, ArraySlice<UInt8>, ArraySlice<UInt8>) throws -> Bool
    ) throws -> ArraySlice<UInt8> {
        let plaintext = try inflatedIfDeflated(stored)
        guard plaintext.first == formatByte else {
            guard !plaintext.isEmpty else { throw BinaryDecodingError(.truncated, offset: 0, "identifier row") }
            return plaintext[...]
        }
        var reader = BinaryReader(plaintext, at: 1)
        let owner = try reader.readBytes()
        guard let first = owner.first, first != formatByte else { throw BinaryDecodingError(.invalidValue, offset: 1, "identifier row owner") }
        var previous: (part: UInt8, suffix: ArraySlice<UInt8>)?
        while !reader.isAtEnd {
            let offset = reader.offset
            let part = try reader.readByte()
            let suffix =
                switch part {
                case edgePart: try reader.readBytes()
                case ledgerPart: LedgerBlock.tailSuffix[...]
                default: plaintext[offset..<offset]
                }
            let ordered = previous.map { $0.part != part ? $0.part < part : $0.suffix.lexicographicallyPrecedes(suffix) } ?? true
            guard mayHold(part, suffix), ordered else {
                throw BinaryDecodingError(.invalidValue, offset: offset, "identifier row part \(part)")
            }
            previous = (part, suffix)
            guard try body(part, suffix, try reader.readBytes()) else { break }
        }
        return owner
    }

    func encoded() -> [UInt8] {
        var writer = BinaryWriter(capacity: owner.count + records.reduce(4) { $0 + $1.suffix.count + $1.value.count + 6 })
        writer.write(byte: Self.formatByte)
        writer.write(bytes: owner)
        for record in records {
            writer.write(byte: record.part)
            if record.part == Self.edgePart { writer.write(bytes: record.suffix) }
            writer.write(bytes: record.value)
        }
        return writer.bytes
    }

    func record(_ part: UInt8, _ suffix: some Collection<UInt8> = [UInt8]()) -> [UInt8]? {
        records.first { $0.part == part && $0.suffix.elementsEqual(suffix) }?.value
    }

    var isEmpty: Bool { records.isEmpty }

    var edgeCount: Int { records.count { $0.part == Self.edgePart } }

    /// The ledger's tail block, when the row keeps it.
    var ledgerTail: [UInt8]? { records.last.flatMap { $0.part == Self.ledgerPart ? $0.value : nil } }

    /// Sets (a value) or removes (nil) the record of `part` (and, for an edge, `suffix`, the
    /// peer's key; for the ledger, the tail's); says whether it was there before.
    @discardableResult mutating func set(_ part: UInt8, _ suffix: [UInt8] = [], _ value: [UInt8]?) -> Bool {
        precondition(Self.mayHold(part, suffix), "part \(part) with a suffix of \(suffix.count) bytes is not kept in an identifier row")
        let index = records.firstIndex { !$0.precedes(part, suffix) } ?? records.endIndex
        let existed = index < records.endIndex && records[index].part == part && records[index].suffix == suffix
        switch (value, existed) {
        case (let value?, true): records[index].value = value
        case (let value?, false): records.insert(Record(part: part, suffix: suffix, value: value), at: index)
        case (nil, true): records.remove(at: index)
        case (nil, false): break
        }
        return existed
    }
}
