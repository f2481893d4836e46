/// ASCII letters folded to lower case, byte by byte: the same on every node and every platform.
/// Names clients send (consent categories and their aliases) compare this way.
public enum ASCIIFolding {
    public static func fold(_ byte: UInt8) -> UInt8 { byte >= 0x41 && byte <= 0x5A ? byte + 0x20 : byte }

    public static func folded(_ text: String) -> String { String(decoding: text.utf8.map(fold), as: UTF8.self) }
}
