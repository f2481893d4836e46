/// Writes JSON text into a byte buffer: compact, strings escaped per RFC 8259 (plus U+2028 and
/// U+2029, so output can be embedded in JavaScript), numbers as their literals.
public struct JSONWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 256) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public var string: String { String(decoding: bytes, as: UTF8.self) }

    public mutating func write(_ value: JSONValue) {
        switch value {
        case .null: raw("null")
        case .bool(let b): raw(b ? "true" : "false")
        case .number(let n): raw(n.literal)
        case .string(let s): write(string: s)
        case .array(let items):
            writeArray(items) { w, item in w.write(item) }
        case .object(let object):
            bytes.append(UInt8(ascii: "{"))
            for (i, member) in object.members.enumerated() {
                if i > 0 { bytes.append(UInt8(ascii: ",")) }
                write(string: member.key)
                bytes.append(UInt8(ascii: ":"))
                write(member.value)
            }
            bytes.append(UInt8(ascii: "}"))
        }
    }

    public mutating func raw(_ text: String) {
        var text = text
        text.withUTF8 { bytes.append(contentsOf: $0) }
    }

    public mutating func raw(byte: UInt8) { bytes.append(byte) }

    public mutating func raw(bytes more: [UInt8]) { bytes.append(contentsOf: more) }

    /// Fixed text (punctuation and member names a renderer writes as one piece).
    public mutating func raw(static text: StaticString) { bytes.append(static: text) }

    /// An integer's decimal literal, written digit by digit (no `String` made for it).
    public mutating func write(integer: Int64) {
        write(fixedPoint: integer, scale: 0)
    }

    /// `value / 10^scale` as an exact decimal literal (e.g. 1234567, 6 → 1.234567), without
    /// trailing zeros in the fraction (revenue sums are written on every read of a buyer's profile).
    public mutating func write(fixedPoint value: Int64, scale: Int) {
        bytes.appendFixedPoint(value, scale: scale)
    }

    public mutating func write(fixedPoint128 value: Int128, scale: Int) {
        bytes.appendFixedPoint128(value, scale: scale)
    }

    public mutating func write(string: String) {
        var string = string
        string.withUTF8 { write(utf8: $0) }
    }

    /// A string given as its UTF-8 bytes (which must be valid UTF-8), quoted and escaped, after
    /// `prefix` (text that needs no escaping).
    public mutating func write(utf8: UnsafeBufferPointer<UInt8>, prefix: StaticString = "") {
        bytes.appendString(utf8: utf8, prefix: prefix)
    }

    /// `[a,b,c]` with `element` writing each item.
    public mutating func writeArray<C: Collection>(_ items: C, _ element: (inout JSONWriter, C.Element) -> Void) {
        bytes.append(UInt8(ascii: "["))
        for (i, item) in items.enumerated() {
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            element(&self, item)
        }
        bytes.append(UInt8(ascii: "]"))
    }

    /// `{...}`: `body` writes the members through the `ObjectWriter` it is handed.
    public mutating func writeObject(_ body: (inout ObjectWriter) -> Void) {
        var object = ObjectWriter(writer: self)
        bytes = []
        object.writer.bytes.append(UInt8(ascii: "{"))
        body(&object)
        object.writer.bytes.append(UInt8(ascii: "}"))
        self = object.writer
    }

    public struct ObjectWriter {
        var writer: JSONWriter
        var first = true

        /// Writes `"key":` and hands the writer to `value` to write the member's value.
        public mutating func member(_ key: String, _ value: (inout JSONWriter) -> Void) {
            var key = key
            key.withUTF8 { member(utf8: $0, value) }
        }

        /// The same, with the key given as its UTF-8 bytes.
        public mutating func member(utf8 key: UnsafeBufferPointer<UInt8>, _ value: (inout JSONWriter) -> Void) {
            if !first { writer.bytes.append(UInt8(ascii: ",")) }
            first = false
            writer.write(utf8: key)
            writer.bytes.append(UInt8(ascii: ":"))
            value(&writer)
        }

        public mutating func member(_ key: String, _ value: JSONValue) { member(key) { $0.write(value) } }
        public mutating func member(_ key: String, string: String) { member(key) { $0.write(string: string) } }
        public mutating func member(_ key: String, integer: Int64) { member(key) { $0.write(integer: integer) } }
    }
}

extension JSONWriter: JSONOutput {
    public mutating func append(byte: UInt8) { bytes.append(byte) }
    public mutating func append(_ more: UnsafeBufferPointer<UInt8>) { bytes.append(contentsOf: more) }
    public mutating func append(upTo count: Int, _ write: (UnsafeMutablePointer<UInt8>) -> Int) { bytes.append(upTo: count, write) }
}

extension JSONValue {
    /// Compact JSON text.
    public var jsonText: String {
        var writer = JSONWriter()
        writer.write(self)
        return writer.string
    }
}
