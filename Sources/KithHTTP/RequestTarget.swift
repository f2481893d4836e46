/// What a request target says beyond its path: query items and percent-encoded text
/// (RFC 3986), decoded once, here, for every route.
extension HTTPRequest {
    /// The query's items, form-decoded (`+` is a space); a name given twice keeps the last value,
    /// an item that does not decode is left out.
    public var queryItems: [String: String] {
        var items: [String: String] = [:]
        guard let query, !query.isEmpty else { return items }
        for pair in query.utf8.split(separator: UInt8(ascii: "&")) {
            let equals = pair.firstIndex(of: UInt8(ascii: "="))
            guard let name = Self.formDecoded(pair[..<(equals ?? pair.endIndex)]) else { continue }
            items[name] = equals.map { Self.formDecoded(pair[pair.index(after: $0)...]) } ?? ""
        }
        return items
    }

    private static func formDecoded(_ bytes: Substring.UTF8View.SubSequence) -> String? {
        percentDecoded(bytes.map { $0 == UInt8(ascii: "+") ? UInt8(ascii: " ") : $0 })
    }

    /// RFC 3986 percent-decoding of a path segment; nil for malformed escapes or invalid UTF-8.
    public static func percentDecoded(_ text: some StringProtocol) -> String? { percentDecoded(Array(text.utf8)) }

    public static func percentDecoded(_ bytes: [UInt8]) -> String? {
        guard bytes.contains(UInt8(ascii: "%")) else { return String(validating: bytes, as: UTF8.self) }
        var decoded: [UInt8] = []
        decoded.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%") {
                guard index + 2 < bytes.count, let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2]) else { return nil }
                decoded.append(high << 4 | low)
                index += 3
            } else {
                decoded.append(bytes[index])
                index += 1
            }
        }
        return String(validating: decoded, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        Character(Unicode.Scalar(byte)).hexDigitValue.map(UInt8.init)
    }
}
