import KithJSON

extension MaskRule {
    static let hidden = "***"

    /// The masked form of a value, always a string. A value the rule cannot shorten safely (an
    /// email without a local part, a phone number of two digits, a date without a year) is
    /// hidden entirely rather than shown in part.
    public func mask(_ value: JSONValue) -> String {
        let text: String
        switch value {
        case .string(let string): text = string
        case .number(let number): text = number.literal
        default: return Self.hidden
        }
        switch self {
        case .email: return Self.maskEmail(text)
        case .lastTwoDigits: return Self.maskDigits(text)
        case .yearOnly: return Self.year(text)
        case .redact: return Self.hidden
        }
    }

    /// `alice@example.com` → `a***@example.com`.
    static func maskEmail(_ text: String) -> String {
        guard let at = text.lastIndex(of: "@"), at != text.startIndex, text.index(after: at) != text.endIndex else { return hidden }
        return String(text[text.startIndex]) + hidden + String(text[at...])
    }

    /// Every digit but the last two becomes `*`; other characters stay (so the shape shows).
    /// Worked on UTF-8 bytes: digits are ASCII, and no byte of a multi-byte character is one.
    static func maskDigits(_ text: String) -> String {
        let digits = text.utf8.reduce(0) { $0 + (isDigit($1) ? 1 : 0) }
        guard digits > 2 else { return hidden }
        var remaining = digits
        let masked = text.utf8.map { byte -> UInt8 in
            guard isDigit(byte) else { return byte }
            defer { remaining -= 1 }
            return remaining > 2 ? UInt8(ascii: "*") : byte
        }
        return String(decoding: masked, as: UTF8.self)
    }

    private static func isDigit(_ byte: UInt8) -> Bool { byte &- UInt8(ascii: "0") < 10 }

    /// `1984-05-02` (or `1984-05-02T…`, or `1984`) → `1984`.
    static func year(_ text: String) -> String {
        let scalars = Array(text.unicodeScalars)
        guard scalars.count >= 4, scalars.prefix(4).allSatisfy({ ("0"..."9").contains($0) }),
            scalars.count == 4 || scalars[4] == "-"
        else { return hidden }
        return String(String.UnicodeScalarView(scalars.prefix(4)))
    }
}
