import Foundation
import KithCRDT
import KithCompression
import KithTestSupport
import Testing

@Suite("gzip")
struct GzipTests {
    @Test func roundTripsRandomData() throws {
        var random = SplitMix64(seed: 91)
        for _ in 0..<200 {
            let size = random.below(100_000)
            let data = (0..<size).map { _ in random.chance(70) ? UInt8(ascii: "a") : UInt8(truncatingIfNeeded: random.next()) }
            #expect(try Gzip.decompress(Gzip.compress(data), limit: size) == data)
        }
    }

    @Test func readsWhatTheGzipToolWrites() throws {
        let text = Array(#"{"batch":[{"type":"track","userId":"u-1","event":"E"}]}"#.utf8)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kith-gzip-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path + ".gz") }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(text)))
        let gzip = Process()
        gzip.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gzip.arguments = ["-9", path]
        try gzip.run()
        gzip.waitUntilExit()
        let compressed = try #require(FileManager.default.contents(atPath: path + ".gz"))
        #expect(try Gzip.decompress(Array(compressed), limit: 1_000) == text)
    }

    @Test func readsConcatenatedMembers() throws {
        let joined = Gzip.compress(Array("hello ".utf8)) + Gzip.compress(Array("world".utf8))
        #expect(try Gzip.decompress(joined, limit: 100) == Array("hello world".utf8))
    }

    @Test func refusesABombBeforeInflatingIt() {
        let bomb = Gzip.compress([UInt8](repeating: 0, count: 50_000_000))  // ~50 KB on the wire
        #expect(bomb.count < 100_000)
        #expect(throws: GzipError(.tooLarge)) { try Gzip.decompress(bomb, limit: 500_000) }
    }

    @Test func refusesCorruptAndTruncatedData() {
        let good = Gzip.compress(Array(String(repeating: "profile ", count: 1_000).utf8))
        #expect(throws: GzipError.self) { try Gzip.decompress(Array("not gzip at all".utf8), limit: 1_000) }
        #expect(throws: GzipError.self) { try Gzip.decompress(Array(good.prefix(good.count / 2)), limit: 100_000) }
        #expect(throws: GzipError.self) { try Gzip.decompress(good + [1, 2, 3], limit: 100_000) }
        var flipped = good
        flipped[good.count / 2] ^= 0xFF
        #expect(throws: GzipError.self) { try Gzip.decompress(flipped, limit: 100_000) }
        #expect(throws: GzipError.self) { try Gzip.decompress([], limit: 100) }
    }
}

@Suite("CRC-32")
struct ChecksumTests {
    @Test("zlib's CRC-32: the standard check value, and continued over pieces")
    func checkValue() {
        // The CRC-32 check value of "123456789" (ISO-HDLC, as gzip uses).
        #expect(Checksum.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
        let bytes = Array("the quick brown fox".utf8)
        #expect(Checksum.crc32(bytes[7...], continuing: Checksum.crc32(bytes[..<7])) == Checksum.crc32(bytes))
        #expect(Checksum.crc32([]) == 0)
    }
}
