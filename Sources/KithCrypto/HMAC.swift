import CCrypto
import Synchronization

/// Cryptography from OpenSSL's libcrypto. Nothing here is hand-written cryptography: these are
/// thin, checked calls into the library.
public enum Crypto {
    /// HMAC-SHA256 of `message` under `key` (RFC 2104 / FIPS 198-1).
    public static func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let result = key.withUnsafeBytes { keyBytes in
            message.withUnsafeBytes { messageBytes in
                output.withUnsafeMutableBufferPointer { out in
                    HMAC(
                        EVP_sha256(), keyBytes.baseAddress, Int32(keyBytes.count),
                        messageBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), messageBytes.count,
                        out.baseAddress, &length)
                }
            }
        }
        precondition(result != nil && length == 32, "HMAC-SHA256 failed in libcrypto")
        return Array(output.prefix(Int(length)))
    }

    /// SHA-256 fetched from the default provider once: `EVP_sha256()` in a call makes OpenSSL 3
    /// look the implementation up again every time, which costs more than hashing a short input.
    nonisolated(unsafe) static let sha256Digest: OpaquePointer = {
        guard let digest = EVP_MD_fetch(nil, "SHA256", nil) else { preconditionFailure("SHA-256 is not available in libcrypto") }
        return digest
    }()

    /// SHA-256 of `message` (FIPS 180-4), through libcrypto's EVP interface.
    public static func sha256(_ message: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let ok = message.withUnsafeBytes { input in
            output.withUnsafeMutableBufferPointer { out in
                EVP_Digest(input.baseAddress, input.count, out.baseAddress, &length, sha256Digest, nil)
            }
        }
        precondition(ok == 1 && length == 32, "SHA-256 failed in libcrypto")
        return Array(output.prefix(32))
    }

    /// `count` bytes from the operating system's CSPRNG via libcrypto.
    public static func randomBytes(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let ok = bytes.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
        guard ok == 1 else { throw CryptoError(operation: "RAND_bytes") }
        return bytes
    }

    /// Compares in time independent of where the inputs differ.
    public static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return a.withUnsafeBytes { x in b.withUnsafeBytes { y in CRYPTO_memcmp(x.baseAddress, y.baseAddress, a.count) == 0 } }
    }

    /// Bytes from hex digits (either case); nil for an odd count or a non-hex character.
    public static func bytes(hex: some StringProtocol) -> [UInt8]? {
        var result: [UInt8] = []
        var digits = hex.utf8.makeIterator()
        while let high = digits.next() {
            guard let low = digits.next(), let h = hexDigitValue(high), let l = hexDigitValue(low) else { return nil }
            result.append(h << 4 | l)
        }
        return result
    }

    /// The value of one hex digit (either case), nil for any other byte.
    public static func hexDigitValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

public struct CryptoError: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var description: String { "\(operation) failed in libcrypto" }
}

/// SHA-256 over data given in pieces (libcrypto's EVP digest context).
public struct SHA256Stream: ~Copyable {
    private let context: OpaquePointer

    public init() {
        guard let context = EVP_MD_CTX_new(), EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1 else {
            preconditionFailure("SHA-256 context could not be created in libcrypto")
        }
        self.context = context
    }

    public mutating func update(_ bytes: [UInt8]) {
        let ok = bytes.withUnsafeBytes { EVP_DigestUpdate(context, $0.baseAddress, $0.count) }
        precondition(ok == 1, "SHA-256 update failed in libcrypto")
    }

    /// The digest; the stream is used up.
    public consuming func finish() -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let ok = output.withUnsafeMutableBufferPointer { EVP_DigestFinal_ex(context, $0.baseAddress, &length) }
        precondition(ok == 1 && length == 32, "SHA-256 final failed in libcrypto")
        return Array(output.prefix(32))
    }

    deinit { EVP_MD_CTX_free(context) }
}

/// An HMAC-SHA256 key set up once in libcrypto, for a key that signs many short messages (the
/// forget-key secret hashes an identifier on every read and erasure, and every stored row on
/// every write). Each message is signed on a context of its own, so one key serves any number
/// of threads: a spare context when one is free, else a duplicate of the keyed one (duplicating
/// costs several allocations; reusing costs none). A caller that signs several messages in a
/// row on one thread can hold a context of its own (`makeContext`).
public final class HMACKey: @unchecked Sendable {
    /// Keyed and never used directly: only duplicated.
    private let context: OpaquePointer
    /// Contexts done with a message, kept for the next ones (at most `spareLimit`).
    private let spares = Mutex<[HMACContext]>([])
    private static let spareLimit = 8

    public init(_ key: [UInt8]) {
        guard let mac = EVP_MAC_fetch(nil, "HMAC", nil) else { preconditionFailure("HMAC is not available in libcrypto") }
        defer { EVP_MAC_free(mac) }
        guard let context = EVP_MAC_CTX_new(mac) else { preconditionFailure("HMAC context could not be created in libcrypto") }
        var digestName = Array("SHA256".utf8CString)
        let ok = digestName.withUnsafeMutableBufferPointer { name in
            var parameters = [OSSL_PARAM_construct_utf8_string("digest", name.baseAddress, 0), OSSL_PARAM_construct_end()]
            return key.withUnsafeBytes { keyBytes in
                EVP_MAC_init(context, keyBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), keyBytes.count, &parameters)
            }
        }
        precondition(ok == 1, "HMAC-SHA256 key setup failed in libcrypto")
        self.context = context
    }

    deinit { EVP_MAC_CTX_free(context) }

    /// A context of this key for the caller alone (one thread at a time).
    public func makeContext() -> HMACContext { HMACContext(duplicating: context) }

    /// HMAC-SHA256 of `message` under this key (the same bytes as `Crypto.hmacSHA256`), or its
    /// first `count` bytes.
    public func authenticate(_ message: some Collection<UInt8>, truncatedTo count: Int = 32) -> [UInt8] {
        precondition((1...32).contains(count))
        let working = spares.withLock { $0.popLast() } ?? makeContext()
        defer {
            spares.withLock { spares in
                if spares.count < Self.spareLimit { spares.append(working) }
            }
        }
        func mac(_ input: UnsafeRawBufferPointer) -> [UInt8] {
            [UInt8](unsafeUninitializedCapacity: count) { output, initialized in
                working.authenticate(input, into: UnsafeMutableRawBufferPointer(output))
                initialized = count
            }
        }
        return message.withContiguousStorageIfAvailable { mac(UnsafeRawBufferPointer($0)) } ?? Array(message).withUnsafeBytes(mac)
    }
}

/// One HMAC-SHA256 context holding its key, for one thread at a time.
public final class HMACContext: @unchecked Sendable {
    private let context: OpaquePointer

    init(duplicating keyed: OpaquePointer) {
        guard let copy = EVP_MAC_CTX_dup(keyed) else { preconditionFailure("HMAC context could not be copied in libcrypto") }
        context = copy
    }

    deinit { EVP_MAC_CTX_free(context) }

    /// Writes the first `output.count` bytes (1 to 32) of the MAC of `message` to `output`.
    public func authenticate(_ message: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) {
        precondition((1...32).contains(output.count))
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { digest in
            var length = 0
            // A null key restarts the message under the key the context already holds.
            let ok =
                EVP_MAC_init(context, nil, 0, nil) == 1
                && EVP_MAC_update(context, message.baseAddress?.assumingMemoryBound(to: UInt8.self), message.count) == 1
                && EVP_MAC_final(context, digest.baseAddress, &length, 32) == 1 && length == 32
            precondition(ok, "HMAC-SHA256 failed in libcrypto")
            output.copyMemory(from: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(digest)[..<output.count]))
        }
    }
}
