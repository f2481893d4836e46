import KithCRDT
import KithStore

/// The row `pseudonym ‖ 0` of sealed `documents`: the identifier's key, and the engine's records
/// of which an identifier has at most one — its index, head and view — sealed together.
///
/// Each of those was a row of its own (sealed layout 1), and under churn, where most customers
/// have two or three messages, rows like these were most of the store: every row pays its key
/// (17 bytes), its seal (key id, nonce and tag, about 39) and LMDB's node (10). One row for all
/// of them pays that once (docs/storage.md, "Where the bytes go"); a message, which changes its
/// subject's head and its profile's view, seals one row instead of two.
///
/// Plaintext: `0 ‖ bytes(identifier key) ‖ (part ‖ bytes(value))*`, parts ascending. A layout-1
/// owner row is the identifier key alone, whose first byte (the identifier's kind) is never 0:
/// that is how `init(decoding:)` reads both, which the move from layout 1 needs.
struct IdentifierRow: Equatable {
    /// The identifier's key.
    let owner: [UInt8]
    /// The records this row holds, by `DocumentPart` raw value, ascending.
    private(set) var records: [(part: UInt8, value: [UInt8])] = []

    /// Parts kept in this row rather than in rows of their own.
    static let heldParts: Set<UInt8> = [DocumentPart.index.rawValue, DocumentPart.head.rawValue, DocumentPart.view.rawValue]

    static func holds(_ part: UInt8) -> Bool { heldParts.contains(part) }

    private static let formatByte: UInt8 = 0

    init(owner: [UInt8]) {
        precondition(owner.first.map { $0 != Self.formatByte } ?? false, "an identifier key of \(owner.count) bytes starting with 0")
        self.owner = owner
    }

    init(decoding plaintext: [UInt8]) throws {
        var records: [(part: UInt8, value: [UInt8])] = []
        owner = Array(
            try Self.visit(plaintext) { part, value in
                records.append((part, Array(value)))
                return true
            })
        self.records = records
    }

    /// The record of `part` in a row's plaintext, without decoding the rest into a row (a point
    /// read wants one record): the plaintext cut down to it in place, so the read allocates
    /// nothing beyond what opening the row did.
    static func record(_ part: UInt8, in plaintext: consuming [UInt8]) throws -> [UInt8]? {
        guard let range = try recordRange(part, in: plaintext) else { return nil }
        plaintext.removeSubrange(range.upperBound...)
        plaintext.removeSubrange(..<range.lowerBound)
        return plaintext
    }

    private static func recordRange(_ part: UInt8, in plaintext: [UInt8]) throws -> Range<Int>? {
        var found: Range<Int>?
        _ = try visit(plaintext) { recordPart, value in
            if recordPart == part { found = value.indices }
            return recordPart < part
        }
        return found
    }

    /// Reads a row's plaintext (either form), checking it: gives `body` each record in part
    /// order while it says to go on, and returns the owner's key.
    private static func visit(_ plaintext: [UInt8], _ body: (UInt8, ArraySlice<UInt8>) throws -> Bool) throws -> ArraySlice<UInt8> {
        guard plaintext.first == formatByte else {
            guard !plaintext.isEmpty else { throw BinaryDecodingError(.truncated, offset: 0, "identifier row") }
            return plaintext[...]
        }
        var reader = BinaryReader(plaintext, at: 1)
        let owner = try reader.readBytes()
        guard let first = owner.first, first != formatByte else { throw BinaryDecodingError(.invalidValue, offset: 1, "identifier row owner") }
        var previous: UInt8?
        while !reader.isAtEnd {
            let offset = reader.offset
            let part = try reader.readByte()
            guard holds(part), previous.map({ $0 < part }) ?? true else {
                throw BinaryDecodingError(.invalidValue, offset: offset, "identifier row part \(part)")
            }
            previous = part
            guard try body(part, try reader.readBytes()) else { break }
        }
        return owner
    }

    func encoded() -> [UInt8] {
        var writer = BinaryWriter(capacity: owner.count + records.reduce(4) { $0 + $1.value.count + 4 })
        writer.write(byte: Self.formatByte)
        writer.write(bytes: owner)
        for record in records {
            writer.write(byte: record.part)
            writer.write(bytes: record.value)
        }
        return writer.bytes
    }

    func record(_ part: UInt8) -> [UInt8]? { records.first { $0.part == part }?.value }

    var isEmpty: Bool { records.isEmpty }

    /// Sets (a value) or removes (nil) the record of `part`; says whether it was there before.
    @discardableResult mutating func set(_ part: UInt8, _ value: [UInt8]?) -> Bool {
        precondition(Self.holds(part), "part \(part) is not kept in an identifier row")
        let index = records.firstIndex { $0.part >= part } ?? records.endIndex
        let existed = index < records.endIndex && records[index].part == part
        switch (value, existed) {
        case (let value?, true): records[index].value = value
        case (let value?, false): records.insert((part, value), at: index)
        case (nil, true): records.remove(at: index)
        case (nil, false): break
        }
        return existed
    }

    static func == (left: IdentifierRow, right: IdentifierRow) -> Bool {
        left.owner == right.owner && left.records.elementsEqual(right.records) { $0.part == $1.part && $0.value == $1.value }
    }
}
