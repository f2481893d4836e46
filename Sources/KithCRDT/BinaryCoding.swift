/// Kith's compact binary encoding: LEB128 varints, zig-zag signed integers, length-prefixed
/// bytes and strings, collections in canonical (sorted) order so equal values encode to equal bytes.
///
/// Decoding is strict: every length and count is checked against the bytes that remain *before*
/// anything is allocated, strings must be valid UTF-8, and a value must consume its input exactly.

/// Why a byte string could not be decoded; `offset` is where the reader stood.
public struct BinaryDecodingError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case truncated, varintOverflow, lengthExceedsInput, invalidUTF8, unknownTag
        case unsupportedVersion, trailingBytes, invalidValue
    }

    public var code: Code
    public var offset: Int
    public var detail: String

    public init(_ code: Code, offset: Int, _ detail: String = "") {
        self.code = code
        self.offset = offset
        self.detail = detail
    }

    public var description: String {
        "binary decoding failed: \(code.rawValue) at byte \(offset)" + (detail.isEmpty ? "" : " (\(detail))")
    }
}

/// A value with a canonical binary encoding.
public protocol BinaryCodable {
    func encode(to writer: inout BinaryWriter)
    init(from reader: inout BinaryReader) throws
}

extension BinaryCodable {
    /// The encoding of `self` as a fresh byte array.
    public func encoded() -> [UInt8] {
        var writer = BinaryWriter()
        encode(to: &writer)
        return writer.bytes
    }

    /// Decodes a value that must span all of `bytes`.
    public init(decoding bytes: [UInt8]) throws {
        var reader = BinaryReader(bytes)
        self = try Self(from: &reader)
        try reader.expectEnd()
    }
}

public struct BinaryWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func write(byte: UInt8) { bytes.append(byte) }

    public mutating func write(varint value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    public mutating func write(signed value: Int64) {
        write(varint: UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    /// A 128-bit signed value, zigzag and base 128 like `write(signed:)`: a value that fits in
    /// 64 bits is written as the same bytes, so a field can widen without changing stored rows.
    public mutating func write(signed128 value: Int128) {
        var v = UInt128(bitPattern: (value << 1) ^ (value >> 127))
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    public mutating func write(count: Int) { write(varint: UInt64(count)) }

    public mutating func write(bool value: Bool) { bytes.append(value ? 1 : 0) }

    /// Eight bytes, big-endian: sorts like the number, for keys.
    public mutating func write(bigEndian value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    public mutating func write(bytes value: some Collection<UInt8>) {
        write(count: value.count)
        bytes.append(contentsOf: value)
    }

    public mutating func write(string value: String) {
        var value = value
        value.withUTF8 { write(bytes: $0) }
    }

    public mutating func write(raw value: some Sequence<UInt8>) { bytes.append(contentsOf: value) }

    public mutating func write<T: BinaryCodable>(_ value: T) { value.encode(to: &self) }

    /// A sorted sequence: count, then each element.
    public mutating func write<C: Collection>(sequence: C, _ element: (inout BinaryWriter, C.Element) -> Void) {
        write(count: sequence.count)
        for item in sequence { element(&self, item) }
    }
}

/// Reads the binary encoding. Its small reads are inlinable: decoders in every other module
/// call them for each field, and a call per length byte was a fair part of a read.
public struct BinaryReader: Sendable {
    public let bytes: [UInt8]
    @usableFromInline var position: Int

    public var offset: Int { position }

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        position = 0
    }

    /// A reader that starts at `offset` (a position an earlier walk over the same bytes found).
    public init(_ bytes: [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset <= bytes.count, "offset outside the bytes")
        self.bytes = bytes
        position = offset
    }

    public var remaining: Int { bytes.count - position }
    public var isAtEnd: Bool { position == bytes.count }

    public func expectEnd() throws {
        if position != bytes.count { throw BinaryDecodingError(.trailingBytes, offset: position, "\(remaining) left") }
    }

    @inlinable
    public mutating func readByte() throws -> UInt8 {
        guard position < bytes.count else { throw BinaryDecodingError(.truncated, offset: position) }
        defer { position += 1 }
        return bytes[position]
    }

    /// Most varints in a record are one byte (lengths, counts, kinds): those are read inline,
    /// the rest by the loop.
    @inlinable
    public mutating func readVarint() throws -> UInt64 {
        if position < bytes.count {
            let byte = bytes[position]
            if byte < 0x80 {
                position += 1
                return UInt64(byte)
            }
        }
        return try readLongVarint()
    }

    @usableFromInline
    mutating func readLongVarint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try readByte()
            if shift == 63 && byte > 1 { throw BinaryDecodingError(.varintOverflow, offset: position - 1) }
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { throw BinaryDecodingError(.varintOverflow, offset: position - 1) }
        }
    }

    @inlinable
    public mutating func readSigned() throws -> Int64 {
        let raw = try readVarint()
        return Int64(bitPattern: (raw >> 1) ^ (0 &- (raw & 1)))
    }

    /// Reads what `write(signed128:)` wrote: at most 19 bytes, refusing bits beyond 128.
    public mutating func readSigned128() throws -> Int128 {
        var raw: UInt128 = 0
        var shift = 0
        while true {
            let byte = try readByte()
            if shift == 126 && byte > 3 { throw BinaryDecodingError(.varintOverflow, offset: position - 1) }
            raw |= UInt128(byte & 0x7F) << shift
            if byte & 0x80 == 0 { break }
            shift += 7
            if shift > 126 { throw BinaryDecodingError(.varintOverflow, offset: position - 1) }
        }
        return Int128(bitPattern: (raw >> 1) ^ (0 &- (raw & 1)))
    }

    @inlinable
    public mutating func readBool() throws -> Bool {
        switch try readByte() {
        case 0: return false
        case 1: return true
        default: throw BinaryDecodingError(.invalidValue, offset: position - 1, "bool")
        }
    }

    public mutating func readBigEndianUInt64() throws -> UInt64 {
        guard remaining >= 8 else { throw BinaryDecodingError(.truncated, offset: position) }
        var value: UInt64 = 0
        for i in 0..<8 { value = value << 8 | UInt64(bytes[position + i]) }
        position += 8
        return value
    }

    /// A count of items that each take at least `minimumItemSize` bytes: bounded by the input.
    @inlinable
    public mutating func readCount(minimumItemSize: Int = 1) throws -> Int {
        let start = position
        let raw = try readVarint()
        // `raw * size <= remaining`, without a division (this runs for every string and list).
        let (needed, overflow) = raw.multipliedReportingOverflow(by: UInt64(max(minimumItemSize, 1)))
        guard !overflow, needed <= UInt64(bytes.count - position) else { throw Self.countExceedsInput(raw, at: start) }
        return Int(raw)
    }

    @usableFromInline
    static func countExceedsInput(_ count: UInt64, at offset: Int) -> BinaryDecodingError {
        BinaryDecodingError(.lengthExceedsInput, offset: offset, "count \(count)")
    }

    /// Exactly `count` bytes with no length before them (fixed-size fields: digests, keys).
    public mutating func readRaw(_ count: Int) throws -> [UInt8] {
        guard remaining >= count else { throw BinaryDecodingError(.truncated, offset: position) }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    public mutating func readBytes() throws -> ArraySlice<UInt8> {
        bytes[try readBytesRange()]
    }

    /// Where a length-prefixed byte string lies, without copying it.
    @inlinable
    public mutating func readBytesRange() throws -> Range<Int> {
        let length = try readCount()
        defer { position += length }
        return position..<position + length
    }

    /// A string, checked as `readStringRange` checks it. Text that is not all ASCII is made by
    /// the validating initialiser itself, so it is checked once, not checked and then decoded.
    public mutating func readString() throws -> String {
        let start = position
        let range = try readBytesRange()
        let string = bytes.withUnsafeBufferPointer { all -> String? in
            let region = UnsafeBufferPointer(rebasing: all[range])
            return Self.isASCII(region) ? String(decoding: region, as: UTF8.self) : String(validating: region, as: UTF8.self)
        }
        guard let string else { throw BinaryDecodingError(.invalidUTF8, offset: start) }
        return string
    }

    /// Where a string lies, checked as `readString` checks it (valid UTF-8) but not copied.
    @inlinable
    public mutating func readStringRange() throws -> Range<Int> {
        let start = position
        let range = try readBytesRange()
        guard Self.isValidUTF8(bytes, range) else { throw BinaryDecodingError(.invalidUTF8, offset: start) }
        return range
    }

    /// Most stored strings are ASCII: checked eight bytes at a time, so the generic validator
    /// runs only for the rest.
    @usableFromInline
    static func isValidUTF8(_ bytes: [UInt8], _ range: Range<Int>) -> Bool {
        bytes.withUnsafeBufferPointer { all in
            let region = UnsafeBufferPointer(rebasing: all[range])
            return isASCII(region) || String(validating: region, as: UTF8.self) != nil
        }
    }

    private static func isASCII(_ region: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let start = region.baseAddress else { return true }
        var high: UInt64 = 0
        var index = 0
        while index + 8 <= region.count {
            high |= UnsafeRawPointer(start).loadUnaligned(fromByteOffset: index, as: UInt64.self)
            index += 8
        }
        while index < region.count {
            high |= UInt64(region[index])
            index += 1
        }
        return high & 0x8080_8080_8080_8080 == 0
    }

    public mutating func read<T: BinaryCodable>(_ type: T.Type = T.self) throws -> T {
        try T(from: &self)
    }

    /// Reads a count then that many elements.
    public mutating func readSequence<T>(minimumItemSize: Int = 1, _ element: (inout BinaryReader) throws -> T) throws -> [T] {
        let count = try readCount(minimumItemSize: minimumItemSize)
        var items: [T] = []
        items.reserveCapacity(count)
        for _ in 0..<count { items.append(try element(&self)) }
        return items
    }
}

// MARK: - Encodings of the core types

extension HybridTimestamp: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(signed: wallMillis)
        writer.write(varint: UInt64(logical))
        writer.write(varint: node)
    }

    public init(from reader: inout BinaryReader) throws {
        let wall = try reader.readSigned()
        let logical = try reader.readVarint()
        guard logical <= UInt64(UInt32.max) else { throw BinaryDecodingError(.invalidValue, offset: reader.offset, "logical") }
        self.init(wallMillis: wall, logical: UInt32(logical), node: try reader.readVarint())
    }
}

extension LWWStamp: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(signed: time)
        writer.write(string: tiebreak)
    }

    public init(from reader: inout BinaryReader) throws {
        self.init(time: try reader.readSigned(), tiebreak: try reader.readString())
    }
}

extension LWWRegister: BinaryCodable where Value: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        stamp.encode(to: &writer)
        value.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws {
        let stamp = try LWWStamp(from: &reader)
        self.init(try Value(from: &reader), stamp: stamp)
    }
}

extension GCounter: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(sequence: counts.sorted { $0.key < $1.key }) { w, entry in
            w.write(varint: entry.key)
            w.write(varint: entry.value)
        }
    }

    public init(from reader: inout BinaryReader) throws {
        let pairs = try reader.readSequence(minimumItemSize: 2) { r in (try r.readVarint(), try r.readVarint()) }
        var counts: [UInt64: UInt64] = [:]
        for (replica, count) in pairs {
            guard counts.updateValue(count, forKey: replica) == nil, count > 0 else {
                throw BinaryDecodingError(.invalidValue, offset: reader.offset, "counter entry")
            }
        }
        self.init(counts: counts)
    }
}

extension PNCounter: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        increments.encode(to: &writer)
        decrements.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws {
        self.init(increments: try GCounter(from: &reader), decrements: try GCounter(from: &reader))
    }
}

extension String: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.write(string: self) }
    public init(from reader: inout BinaryReader) throws { self = try reader.readString() }
}

extension ORSet: BinaryCodable where Element: BinaryCodable, Tag: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        Self.encode(live, to: &writer)
        Self.encode(removed, to: &writer)
    }

    public init(from reader: inout BinaryReader) throws {
        let live = try Self.decodeTagMap(from: &reader)
        let removed = try Self.decodeTagMap(from: &reader)
        self.init(live: live, removed: removed)
        guard self.live.values.reduce(0, { $0 + $1.count }) == live.values.reduce(0, { $0 + $1.count }) else {
            throw BinaryDecodingError(.invalidValue, offset: reader.offset, "tag both live and removed")
        }
    }

    private static func encode(_ map: [Element: Set<Tag>], to writer: inout BinaryWriter) {
        writer.write(sequence: map.keys.sorted()) { w, element in
            element.encode(to: &w)
            w.write(sequence: map[element]!.sorted()) { w, tag in tag.encode(to: &w) }
        }
    }

    private static func decodeTagMap(from reader: inout BinaryReader) throws -> [Element: Set<Tag>] {
        var map: [Element: Set<Tag>] = [:]
        let count = try reader.readCount(minimumItemSize: 2)
        for _ in 0..<count {
            let element = try Element(from: &reader)
            let tags = try reader.readSequence { r in try Tag(from: &r) }
            guard !tags.isEmpty, map[element] == nil, Set(tags).count == tags.count else {
                throw BinaryDecodingError(.invalidValue, offset: reader.offset, "or-set entry")
            }
            map[element] = Set(tags)
        }
        return map
    }
}

extension CRDTMap: BinaryCodable where Key: BinaryCodable, Value: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(count: count)
        for (key, value) in pairs {
            key.encode(to: &writer)
            value.encode(to: &writer)
        }
    }

    /// Keys must be strictly ascending: the one canonical encoding, and no duplicates.
    public init(from reader: inout BinaryReader) throws {
        let count = try reader.readCount(minimumItemSize: 2)
        var keys: [Key] = [], values: [Value] = []
        keys.reserveCapacity(count)
        values.reserveCapacity(count)
        for _ in 0..<count {
            keys.append(try Key(from: &reader))
            values.append(try Value(from: &reader))
        }
        guard let storage = SortedDictionary(ascending: keys, values) else {
            throw BinaryDecodingError(.invalidValue, offset: reader.offset, "map keys not strictly ascending")
        }
        self.init(storage: storage)
    }
}
