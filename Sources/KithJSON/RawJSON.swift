import KithCRDT

/// A JSON value kept as its compact text.
///
/// Trait values and event properties are stored and served this way: decoding a stored profile
/// is a byte copy instead of rebuilding a tree of strings, and rendering it is an append. The
/// text is produced by `JSONWriter` from a parsed (hence valid) value, so equal values have equal
/// bytes. Stored bytes are trusted as Kith's own; bytes from elsewhere go through `init(validating:)`.
public struct RawJSON: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(_ value: JSONValue) {
        var writer = JSONWriter(capacity: 64)
        writer.write(value)
        bytes = writer.bytes
    }

    /// Parses and re-writes `bytes`, so the result is valid and compact.
    public init(validating bytes: [UInt8]) throws(JSONError) {
        self.init(try JSONParser.parse(bytes))
    }

    /// The parsed value (the text is always valid JSON).
    public var value: JSONValue { Self.value(ofStored: bytes) }

    /// The value of JSON text Kith stored (as `bytes` of one of these).
    public static func value(ofStored text: some Collection<UInt8>) -> JSONValue {
        (try? JSONParser.parse(Array(text))) ?? .null  // stored text is checked JSON when made: cannot fail
    }

    public var description: String { String(decoding: bytes, as: UTF8.self) }

    public static func < (a: RawJSON, b: RawJSON) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }

    public static let emptyObject = RawJSON(.object(JSONObject()))
}

extension RawJSON: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.write(bytes: bytes) }

    public init(from reader: inout BinaryReader) throws {
        let offset = reader.offset
        let slice = try reader.readBytes()
        guard !slice.isEmpty else { throw BinaryDecodingError(.invalidValue, offset: offset, "empty json text") }
        bytes = Array(slice)
    }
}

extension JSONWriter {
    public mutating func write(raw value: RawJSON) { raw(bytes: value.bytes) }
}
