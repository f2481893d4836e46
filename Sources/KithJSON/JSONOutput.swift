/// Where JSON text is appended: the one definition of how strings are escaped and numbers
/// written, shared by `JSONWriter` (over an array) and `JSONFixedOutput` (straight into the storage of the array it makes).
public protocol JSONOutput: ~Copyable {
    mutating func append(byte: UInt8)
    mutating func append(_ bytes: UnsafeBufferPointer<UInt8>)
    /// Lets `write` fill up to `count` bytes in place; it returns how many it wrote.
    mutating func append(upTo count: Int, _ write: (UnsafeMutablePointer<UInt8>) -> Int)
}

extension Array: JSONOutput where Element == UInt8 {
    public mutating func append(byte: UInt8) { append(byte) }

    public mutating func append(_ bytes: UnsafeBufferPointer<UInt8>) { append(contentsOf: bytes) }

    public mutating func append(upTo count: Int, _ write: (UnsafeMutablePointer<UInt8>) -> Int) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: count) { space in
            append(contentsOf: UnsafeBufferPointer(rebasing: space[..<write(space.baseAddress!)]))
        }
    }
}

extension JSONOutput where Self: ~Copyable {
    /// Fixed text (punctuation and member names written as one piece).
    @inlinable
    public mutating func append(static text: StaticString) {
        append(UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// A string given as its UTF-8 bytes (which must be valid UTF-8), quoted and escaped per
    /// RFC 8259 (plus U+2028 and U+2029, so output can be embedded in JavaScript), after
    /// `prefix` (text that needs no escaping).
    public mutating func appendString(utf8: UnsafeBufferPointer<UInt8>, prefix: StaticString = "") {
        append(byte: UInt8(ascii: "\""))
        if prefix.utf8CodeUnitCount > 0 { append(static: prefix) }
        var runStart = 0
        var i = 0
        while i < utf8.count {
            // Eight bytes at a time while none of them needs a look (almost all text).
            if i + 8 <= utf8.count, !JSONEscaping.mayNeedEscape(UnsafeRawPointer(utf8.baseAddress! + i).loadUnaligned(as: UInt64.self)) {
                i += 8
                continue
            }
            let byte = utf8[i]
            guard let escape = JSONEscaping.escape(byte, at: i, in: utf8) else {
                i += 1
                continue
            }
            append(UnsafeBufferPointer(rebasing: utf8[runStart..<i]))
            append(static: escape.text)
            if escape.isControl { appendControlEscape(byte) }
            i += escape.length
            runStart = i
        }
        append(UnsafeBufferPointer(rebasing: utf8[runStart..<utf8.count]))
        append(byte: UInt8(ascii: "\""))
    }

    private mutating func appendControlEscape(_ byte: UInt8) {
        let hex: StaticString = "0123456789abcdef"
        append(byte: hex.utf8Start[Int(byte >> 4)])
        append(byte: hex.utf8Start[Int(byte & 0xF)])
    }

    /// `value / 10^scale` as an exact decimal literal (e.g. 1234567, 6 → 1.234567), without
    /// trailing zeros in the fraction, written in place (no `String` made for it).
    public mutating func appendFixedPoint(_ value: Int64, scale: Int) {
        appendFixedPoint(magnitude: value.magnitude, negative: value < 0, scale: scale)
    }

    /// The same for sums that may outgrow 64 bits (revenue totals are carried exactly in 128).
    public mutating func appendFixedPoint128(_ value: Int128, scale: Int) {
        if let small = Int64(exactly: value) { return appendFixedPoint(small, scale: scale) }
        appendFixedPoint(magnitude: value.magnitude, negative: value < 0, scale: scale)
    }

    private mutating func appendFixedPoint<Magnitude: FixedWidthInteger & UnsignedInteger>(
        magnitude: Magnitude, negative: Bool, scale: Int
    ) {
        precondition((0...18).contains(scale), "scale must be 0 to 18")
        // At most 39 digits, a point and a sign.
        append(upTo: 42) { text in
            // Written last digit first into a scratch area, then moved to the front.
            var digits: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)
            return withUnsafeMutableBytes(of: &digits) { scratch in
                var at = scratch.count
                func put(_ byte: UInt8) {
                    at -= 1
                    scratch[at] = byte
                }
                var rest = magnitude
                var fraction = scale
                while fraction > 0 && rest % 10 == 0 {  // trailing zeros of the fraction are left out
                    rest /= 10
                    fraction -= 1
                }
                for _ in 0..<fraction {
                    put(UInt8(ascii: "0") + UInt8(rest % 10))
                    rest /= 10
                }
                if fraction > 0 { put(UInt8(ascii: ".")) }
                repeat {
                    put(UInt8(ascii: "0") + UInt8(rest % 10))
                    rest /= 10
                } while rest > 0
                if negative { put(UInt8(ascii: "-")) }
                let written = scratch.count - at
                UnsafeMutableRawPointer(text).copyMemory(from: scratch.baseAddress! + at, byteCount: written)
                return written
            }
        }
    }
}

/// Which bytes of a JSON string need writing differently.
enum JSONEscaping {
    static let lowBytes: UInt64 = 0x0101_0101_0101_0101
    static let highBits: UInt64 = 0x8080_8080_8080_8080

    /// Whether any of the eight bytes in `word` is a control character, `"`, `\` or 0xE2 (the
    /// lead byte of U+2028 and U+2029). Exact for "none": false means no byte needs a look.
    @inline(__always)
    static func mayNeedEscape(_ word: UInt64) -> Bool {
        func hasZeroByte(_ v: UInt64) -> Bool { (v &- lowBytes) & ~v & highBits != 0 }
        let control = (word &- 0x20 &* lowBytes) & ~word & highBits != 0  // some byte < 0x20
        return control || hasZeroByte(word ^ (0x22 &* lowBytes)) || hasZeroByte(word ^ (0x5C &* lowBytes))
            || hasZeroByte(word ^ (0xE2 &* lowBytes))
    }

    struct Escape {
        var text: StaticString
        /// Bytes of input it replaces.
        var length: Int
        /// `\u00` is followed by the byte's two hex digits.
        var isControl: Bool
    }

    @inline(__always)
    static func escape(_ byte: UInt8, at i: Int, in utf8: UnsafeBufferPointer<UInt8>) -> Escape? {
        switch byte {
        case UInt8(ascii: "\""): Escape(text: "\\\"", length: 1, isControl: false)
        case UInt8(ascii: "\\"): Escape(text: "\\\\", length: 1, isControl: false)
        case 0x0A: Escape(text: "\\n", length: 1, isControl: false)
        case 0x0D: Escape(text: "\\r", length: 1, isControl: false)
        case 0x09: Escape(text: "\\t", length: 1, isControl: false)
        case 0..<0x20: Escape(text: "\\u00", length: 1, isControl: true)
        case 0xE2 where i + 2 < utf8.count && utf8[i + 1] == 0x80 && (utf8[i + 2] == 0xA8 || utf8[i + 2] == 0xA9):
            Escape(text: utf8[i + 2] == 0xA8 ? "\\u2028" : "\\u2029", length: 3, isControl: false)
        default: nil
        }
    }
}

extension Array where Element == UInt8 {
    /// JSON text written by `write` straight into the new array's storage, `capacity` bytes of
    /// it: no buffer of its own to copy from afterwards. Text that does not fit is written again
    /// into four times the room (a renderer that knows its input estimates well, so this is rare).
    public init(jsonCapacity capacity: Int, _ write: (inout JSONFixedOutput) -> Void) {
        var room = Swift.max(capacity, 16)
        while true {
            var fitted = false
            self.init(unsafeUninitializedCapacity: room) { storage, initialized in
                var output = JSONFixedOutput(storage.baseAddress!, capacity: room)
                write(&output)
                fitted = !output.overflowed
                initialized = fitted ? output.count : 0
            }
            if fitted { return }
            room *= 4
        }
    }
}

/// JSON text written into a fixed amount of memory. A write that does not fit is not made, and
/// marks the output as overflowed (its text is then incomplete: write it again with more room).
/// Each write is a compare and a copy; its methods are inlinable into renderers in other modules.
public struct JSONFixedOutput: ~Copyable, JSONOutput {
    @usableFromInline let start: UnsafeMutablePointer<UInt8>
    @usableFromInline let capacity: Int
    @usableFromInline var written = 0
    @usableFromInline var didOverflow = false

    public var count: Int { written }
    public var overflowed: Bool { didOverflow }

    @usableFromInline
    init(_ start: UnsafeMutablePointer<UInt8>, capacity: Int) {
        self.start = start
        self.capacity = capacity
    }

    @inlinable
    public mutating func append(byte: UInt8) {
        guard written < capacity else { return didOverflow = true }
        start[written] = byte
        written += 1
    }

    @inlinable
    public mutating func append(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let source = bytes.baseAddress else { return }
        guard bytes.count <= capacity - written else { return didOverflow = true }
        (start + written).update(from: source, count: bytes.count)
        written += bytes.count
    }

    @inlinable
    public mutating func append(upTo limit: Int, _ write: (UnsafeMutablePointer<UInt8>) -> Int) {
        guard limit <= capacity - written else { return didOverflow = true }
        let added = write(start + written)
        precondition(added <= limit, "wrote past the space it asked for")
        written += added
    }
}
