/// Phone numbers in E.164 form (`+442079460000`): the one form a phone identifier is stored,
/// compared and replicated in, whatever way a touchpoint wrote it.
///
/// Formatting is dropped (spaces, hyphens, dots, parentheses, slashes); `00` stands for `+`. A
/// national number (`020 7946 0000`) needs a region: its trunk prefix, when the number starts
/// with it (`0` in the United Kingdom, `1` in North America), gives way to the region's country
/// code. What is left must be `+`, a country code
/// that does not start with 0, and 7 to 15 digits in all; anything else (letters, extensions,
/// too short) is not a phone identifier. This is a normal form, not validation against numbering
/// plans: two writings of one number meet, and a value is never guessed into another number.
public enum PhoneNumber {
    /// A region national numbers are read in.
    public struct Region: Sendable, Equatable {
        /// The region's code (ISO 3166-1 alpha-2), as configured.
        public var code: String
        /// Its country calling code, digits only (`44`).
        public var countryCode: String
        /// The prefix a national number starts with that the international form drops (`0`),
        /// or empty where the national form keeps it (Italy).
        public var trunkPrefix: String

        public init(code: String, countryCode: String, trunkPrefix: String) {
            self.code = code
            self.countryCode = countryCode
            self.trunkPrefix = trunkPrefix
        }

        /// A region by its ISO code, from the table below; nil for one not in it (configure its
        /// country code and trunk prefix instead).
        public init?(code: String) {
            guard let (countryCode, trunkPrefix) = Self.known[code.uppercased()] else { return nil }
            self.init(code: code.uppercased(), countryCode: countryCode, trunkPrefix: trunkPrefix)
        }

        /// Country calling code and trunk prefix of common regions.
        static let known: [String: (String, String)] = [
            "GB": ("44", "0"), "IE": ("353", "0"), "US": ("1", "1"), "CA": ("1", "1"), "DE": ("49", "0"), "FR": ("33", "0"),
            "NL": ("31", "0"), "BE": ("32", "0"), "CH": ("41", "0"), "AT": ("43", "0"), "SE": ("46", "0"), "NO": ("47", ""),
            "DK": ("45", ""), "FI": ("358", "0"), "ES": ("34", ""), "PT": ("351", ""), "IT": ("39", ""), "PL": ("48", ""),
            "AU": ("61", "0"), "NZ": ("64", "0"), "JP": ("81", "0"), "IN": ("91", "0"), "BR": ("55", "0"), "MX": ("52", ""),
            "ZA": ("27", "0"),
        ]
    }

    /// The E.164 form of `text`, or nil when it is not a phone number (or is national and no
    /// region is given).
    public static func normalized(_ text: String, region: Region? = nil) -> String? {
        var digits: [UInt8] = []
        var international = false
        var seenDigit = false
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                digits.append(byte)
                seenDigit = true
            case UInt8(ascii: "+") where !seenDigit && !international: international = true
            case UInt8(ascii: " "), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "/"), 0x09: continue
            default: return nil
            }
        }
        if !international, digits.starts(with: [UInt8(ascii: "0"), UInt8(ascii: "0")]) {
            international = true
            digits.removeFirst(2)
        }
        if !international {
            guard let region else { return nil }
            let trunk = Array(region.trunkPrefix.utf8)
            if !trunk.isEmpty, digits.starts(with: trunk) { digits.removeFirst(trunk.count) }
            digits = Array(region.countryCode.utf8) + digits
        }
        guard (7...15).contains(digits.count), digits.first != UInt8(ascii: "0") else { return nil }
        return "+" + String(decoding: digits, as: UTF8.self)
    }

    /// Whether `bytes` is already in E.164 form: `+`, a digit other than 0, and 6 to 14 digits more.
    static func isNormal(utf8 bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard (8...16).contains(bytes.count), bytes[0] == UInt8(ascii: "+"), bytes[1] != UInt8(ascii: "0") else { return false }
        return bytes.dropFirst().allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }
}
