import Dispatch
import KithCRDT
import KithCrypto
import KithTestSupport
import Testing

@Suite("Crypto (libcrypto calls)")
struct CryptoTests {
    static func hex(_ text: String) -> [UInt8] { Crypto.bytes(hex: text)! }

    @Test("SHA-256 matches FIPS 180-4 examples, one-shot and streamed")
    func sha256() {
        #expect(Crypto.sha256([]) == Self.hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
        #expect(Crypto.sha256(Array("abc".utf8)) == Self.hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"))
        var stream = SHA256Stream()
        stream.update(Array("a".utf8))
        stream.update(Array("bc".utf8))
        #expect(stream.finish() == Crypto.sha256(Array("abc".utf8)))
    }

    @Test("HMAC-SHA256 matches RFC 4231 test cases 1 and 2, one-shot and with a prepared key")
    func hmacVectors() {
        let cases: [(key: [UInt8], message: String, tag: String)] = [
            ([UInt8](repeating: 0x0b, count: 20), "Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (Array("Jefe".utf8), "what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        ]
        for item in cases {
            #expect(Crypto.hmacSHA256(key: item.key, message: Array(item.message.utf8)) == Self.hex(item.tag))
            #expect(HMACKey(item.key).authenticate(Array(item.message.utf8)) == Self.hex(item.tag))
            // Truncated (pseudonyms), from a slice, and from a collection with no contiguous storage.
            let message = Array(("." + item.message).utf8)
            #expect(HMACKey(item.key).authenticate(message.dropFirst(), truncatedTo: 16) == Array(Self.hex(item.tag).prefix(16)))
            #expect(HMACKey(item.key).authenticate(Set([0])) == Crypto.hmacSHA256(key: item.key, message: [0]))
        }
    }

    @Test("a context of a key gives the key's tags, whole and truncated, one message after another")
    func contextAgreesWithKey() {
        var random = SplitMix64(seed: 43)
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }
        let key = HMACKey(secret)
        let context = key.makeContext()
        for index in 0..<200 {
            let message = (0..<(index % 90)).map { _ in UInt8.random(in: 0...255, using: &random) }
            let length = index % 32 + 1
            var output = [UInt8](repeating: 0, count: length)
            message.withUnsafeBytes { input in output.withUnsafeMutableBytes { context.authenticate(input, into: $0) } }
            #expect(output == Array(Crypto.hmacSHA256(key: secret, message: message).prefix(length)))
            #expect(key.authenticate(message, truncatedTo: length) == output)
        }
    }

    @Test("a prepared key gives the one-shot tag for any message, from many threads at once")
    func preparedKeyAgreesConcurrently() {
        var random = SplitMix64(seed: 42)
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }
        let key = HMACKey(secret)
        let messages = (0..<256).map { index in (0..<(index % 70)).map { _ in UInt8.random(in: 0...255, using: &random) } }
        let expected = messages.map { Crypto.hmacSHA256(key: secret, message: $0) }
        let mismatches = Mismatches()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for (message, tag) in zip(messages, expected) where key.authenticate(message) != tag { mismatches.add() }
        }
        #expect(mismatches.count == 0)
    }
}

final class Mismatches: @unchecked Sendable {
    private let lock = DispatchQueue(label: "mismatches")
    private var value = 0
    func add() { lock.sync { value += 1 } }
    var count: Int { lock.sync { value } }
}

@Suite("AES-256-GCM")
struct AESGCMTests {
    static func hex(_ text: String) -> [UInt8] { Crypto.bytes(hex: text)! }

    @Test("known answers: McGrew and Viega's GCM test cases 13 and 14 (256-bit zero key, zero nonce)")
    func knownAnswers() throws {
        let key = [UInt8](repeating: 0, count: 32), nonce = [UInt8](repeating: 0, count: 12)
        let empty = try AESGCM.seal([], key: key, nonce: nonce, associatedData: [])
        #expect(empty == nonce + Self.hex("530f8afbc74536b9a963b4f1c4cb738b"))
        let block = try AESGCM.seal([UInt8](repeating: 0, count: 16), key: key, nonce: nonce, associatedData: [])
        #expect(block == nonce + Self.hex("cea7403d4d606b6e074ec5d3baf39d18") + Self.hex("d0d1c8a799996bf0265b98b5d48ab919"))
        #expect(try AESGCM.open(block, key: key, associatedData: []) == [UInt8](repeating: 0, count: 16))
    }

    @Test("round trips of random sizes; any changed byte, other key or other associated data fails to open")
    func roundTripAndTampering() throws {
        var random = SplitMix64(seed: 7)
        func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) } }
        for size in [0, 1, 15, 16, 17, 255, 4_096] {
            let key = bytes(32), data = bytes(size), aad = bytes(size % 40)
            let box = try AESGCM.seal(data, key: key, associatedData: aad)
            #expect(box.count == size + AESGCM.overhead)
            #expect(try AESGCM.open(box, key: key, associatedData: aad) == data)
            #expect(try AESGCM.seal(data, key: key, associatedData: aad) != box, "a fresh nonce for every seal")
            for index in [0, AESGCM.nonceSize, box.count - 1] where index < box.count {
                var changed = box
                changed[index] ^= 0x01
                #expect(throws: AuthenticationFailure.self) { try AESGCM.open(changed, key: key, associatedData: aad) }
            }
            #expect(throws: AuthenticationFailure.self) { try AESGCM.open(box, key: bytes(32), associatedData: aad) }
            #expect(throws: AuthenticationFailure.self) { try AESGCM.open(box, key: key, associatedData: aad + [1]) }
        }
        #expect(throws: AuthenticationFailure.self) { try AESGCM.open([1, 2, 3], key: bytes(32), associatedData: []) }
    }
}

@Suite("AES-256-GCM with a kept context")
struct AESGCMContextTests {
    @Test(
        "one context re-keyed between interleaved keys gives the one-shot boxes, in both directions; tampering and a wrong key fail and leave it usable"
    )
    func agreesWithOneShotAcrossKeys() throws {
        var random = SplitMix64(seed: 11)
        func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) } }
        let keys = [bytes(32), bytes(32), bytes(32)]
        let context = AESGCMContext()
        var nonces = NonceSource()
        var seen = Set<[UInt8]>()
        for (index, size) in [0, 1, 16, 33, 1_000, 5, 64, 2, 300].enumerated() {
            // Two keys in a row, then a switch: both the kept schedule and a new one are used.
            let keyBytes = keys[(index / 2) % keys.count]
            let key = try #require(AESGCM.Key(keyBytes)), other = try #require(AESGCM.Key(keys[(index / 2 + 1) % keys.count]))
            let data = bytes(size), aad = bytes(size % 7), nonce = try nonces.next()
            #expect(seen.insert(nonce).inserted)
            let box = try context.seal(data, key: key, nonce: nonce, associatedData: aad)
            #expect(box == (try AESGCM.seal(data, key: keyBytes, nonce: nonce, associatedData: aad)))
            #expect(try context.open(box[...], key: key, associatedData: aad) == data)
            #expect(try AESGCM.open(box, key: keyBytes, associatedData: aad) == data)
            // The nonce, the body and the tag each count: a change to any of them fails the open.
            for position in Set([0, AESGCM.nonceSize, box.count - AESGCM.tagSize - 1, box.count - AESGCM.tagSize, box.count - 1])
            where position < box.count {
                var changed = box
                changed[position] ^= 0x80
                #expect(throws: AuthenticationFailure.self) { try context.open(changed[...], key: key, associatedData: aad) }
            }
            #expect(throws: AuthenticationFailure.self) { try context.open(box[...], key: other, associatedData: aad) }
            #expect(throws: AuthenticationFailure.self) { try context.open(box[...], key: key, associatedData: aad + [0]) }
            #expect(throws: AuthenticationFailure.self) { try context.open(box.dropLast()[...], key: key, associatedData: aad) }
            #expect(try context.open(box[...], key: key, associatedData: aad) == data, "a failed open leaves the context usable")
            let framed = bytes(index + 1) + box
            #expect(
                try context.open(framed[(index + 1)...], key: key, associatedData: aad) == data,
                "a box inside a larger row opens from where its slice starts")
        }
        for _ in 0..<600 { #expect(seen.insert(try nonces.next()).inserted) }
    }

    @Test("a key is exactly 32 bytes, and keeps them in order")
    func keyHoldsItsBytes() throws {
        let bytes = (0..<32).map { UInt8($0 * 7 + 1) }
        #expect(AESGCM.Key(bytes)?.byteArray == bytes)
        #expect(bytes.withUnsafeBytes { AESGCM.Key(loading: $0.baseAddress!) } == AESGCM.Key(bytes))
        #expect(AESGCM.Key(bytes.dropLast()) == nil && AESGCM.Key(bytes + [0]) == nil && AESGCM.Key([UInt8]()) == nil)
        #expect(AESGCM.Key(bytes) != AESGCM.Key(bytes.dropLast() + [0]))
    }
}
