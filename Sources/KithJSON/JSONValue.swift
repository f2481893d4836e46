import KithCRDT

/// A JSON value as received. Numbers keep their literal text, so a value round-trips byte for byte
/// and money can be read exactly (see `JSONNumber.fixedPoint`), never through a binary double.
/// Objects keep member order, as sent.
public enum JSONValue: Hashable, Sendable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var objectValue: JSONObject? {
        if case .object(let o) = self { return o }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var isNull: Bool { self == .null }
}

/// A JSON number, stored as its validated literal.
public struct JSONNumber: Hashable, Sendable, CustomStringConvertible {
    public let literal: String

    /// Wraps a literal that the parser (or `init?(literal:)`) has already checked against the grammar.
    init(validated literal: String) {
        self.literal = literal
    }

    public init?(literal: String) {
        var bytes = Array(literal.utf8)
        let valid = bytes.withUnsafeMutableBufferPointer { buffer -> Bool in
            var parser = JSONParser(UnsafeBufferPointer(buffer), maximumDepth: 1)
            return (try? parser.parseNumberLiteral()) != nil && parser.index == buffer.count  // the question is whether it parses
        }
        guard valid, !literal.isEmpty else { return nil }
        self.literal = literal
    }

    public init(_ value: Int64) {
        literal = String(value)
    }

    public var doubleValue: Double { Double(literal) ?? .nan }

    public var description: String { literal }

    /// The value times 10^`scale`, rounded half away from zero, exactly (no floating point);
    /// nil if it does not fit in an Int64. Used for revenue so that sums are exact and do not
    /// depend on the order of addition.
    public func fixedPoint(scale: Int) -> Int64? {
        var negative = false, digits: [UInt8] = [], pointPosition: Int? = nil, exponent = 0
        var bytes = literal.utf8.makeIterator()
        while let byte = bytes.next() {
            switch byte {
            case UInt8(ascii: "-"): negative = true
            case UInt8(ascii: "."): pointPosition = digits.count
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digits.append(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "e"), UInt8(ascii: "E"):
                var rest = ""
                while let b = bytes.next() { rest.unicodeScalars.append(Unicode.Scalar(b)) }
                guard let e = Int(rest), abs(e) < 400 else { return nil }
                exponent = e
            default: return nil
            }
        }
        // value = digits × 10^(exponent - fractionDigits); we want value × 10^scale.
        let fractionDigits = digits.count - (pointPosition ?? digits.count)
        let shift = exponent - fractionDigits + scale
        var result: Int64 = 0
        // Digits past `kept` are dropped by rounding; when even the first significant digit lies
        // below the rounding position the value rounds to zero.
        if digits.count + shift < 0 { return 0 }
        let kept = shift >= 0 ? digits.count : digits.count + shift
        for digit in digits.prefix(kept) {
            let (m, o1) = result.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(Int64(digit))
            if o1 || o2 { return nil }
            result = s
        }
        if shift > 0 {
            for _ in 0..<shift {
                let (m, o) = result.multipliedReportingOverflow(by: 10)
                if o { return nil }
                result = m
            }
        } else if kept < digits.count && digits[kept] >= 5 {
            result += 1
        }
        return negative ? -result : result
    }
}

/// A JSON object: members in the order they were sent. Keys are unique (the parser rejects
/// duplicates: two readers of one document must never disagree about what it says).
public struct JSONObject: Hashable, Sendable {
    public struct Member: Hashable, Sendable {
        public var key: String
        public var value: JSONValue

        public init(_ key: String, _ value: JSONValue) {
            self.key = key
            self.value = value
        }
    }

    public var members: [Member]

    public init(_ members: [Member] = []) {
        self.members = members
    }

    public subscript(key: String) -> JSONValue? {
        for member in members where member.key == key { return member.value }
        return nil
    }

    public var isEmpty: Bool { members.isEmpty }
    public var count: Int { members.count }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByNilLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .number(JSONNumber(value)) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(nilLiteral: ()) { self = .null }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(JSONObject(elements.map { JSONObject.Member($0.0, $0.1) }))
    }
}

// MARK: - A total order, used only to break ties deterministically (not numeric comparison).

extension JSONValue: Comparable {
    private var rank: Int {
        switch self {
        case .null: 0
        case .bool: 1
        case .number: 2
        case .string: 3
        case .array: 4
        case .object: 5
        }
    }

    public static func < (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.bool(let x), .bool(let y)): return !x && y
        case (.number(let x), .number(let y)): return x.literal < y.literal
        case (.string(let x), .string(let y)): return x < y
        case (.array(let x), .array(let y)): return x.lexicographicallyPrecedes(y)
        case (.object(let x), .object(let y)):
            return x.members.lexicographicallyPrecedes(y.members) { ($0.key, $0.value) < ($1.key, $1.value) }
        default: return a.rank < b.rank
        }
    }
}

// MARK: - Binary encoding (for storage), canonical: same value, same bytes.

extension JSONValue: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case .null: writer.write(byte: 0)
        case .bool(let b): writer.write(byte: b ? 2 : 1)
        case .number(let n):
            writer.write(byte: 3)
            writer.write(string: n.literal)
        case .string(let s):
            writer.write(byte: 4)
            writer.write(string: s)
        case .array(let items):
            writer.write(byte: 5)
            writer.write(sequence: items) { w, item in item.encode(to: &w) }
        case .object(let object):
            writer.write(byte: 6)
            writer.write(sequence: object.members) { w, member in
                w.write(string: member.key)
                member.value.encode(to: &w)
            }
        }
    }

    public init(from reader: inout BinaryReader) throws {
        try self.init(from: &reader, depth: 0)
    }

    private init(from reader: inout BinaryReader, depth: Int) throws {
        guard depth < JSONParser.defaultMaximumDepth else {
            throw BinaryDecodingError(.invalidValue, offset: reader.offset, "json nesting")
        }
        let tagOffset = reader.offset
        switch try reader.readByte() {
        case 0: self = .null
        case 1: self = .bool(false)
        case 2: self = .bool(true)
        case 3:
            guard let number = JSONNumber(literal: try reader.readString()) else {
                throw BinaryDecodingError(.invalidValue, offset: tagOffset, "json number")
            }
            self = .number(number)
        case 4: self = .string(try reader.readString())
        case 5: self = .array(try reader.readSequence { r in try JSONValue(from: &r, depth: depth + 1) })
        case 6:
            let members = try reader.readSequence(minimumItemSize: 2) { r in
                JSONObject.Member(try r.readString(), try JSONValue(from: &r, depth: depth + 1))
            }
            guard Set(members.map(\.key)).count == members.count else {
                throw BinaryDecodingError(.invalidValue, offset: tagOffset, "duplicate json key")
            }
            self = .object(JSONObject(members))
        default: throw BinaryDecodingError(.unknownTag, offset: tagOffset, "json")
        }
    }
}
