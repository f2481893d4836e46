import CCrypto

#if canImport(Glibc)
    import Glibc
#endif

/// AES-256-GCM from libcrypto (NIST SP 800-38D): authenticated encryption of values at rest.
/// A sealed box is `nonce (12) ‖ ciphertext ‖ tag (16)`; the nonce is random for every seal,
/// which is safe for up to 2³² seals under one key (each key here seals one customer's rows).
public enum AESGCM {
    public static let keySize = 32
    public static let nonceSize = 12
    public static let tagSize = 16
    /// What a sealed box adds to its plaintext.
    public static let overhead = nonceSize + tagSize

    /// A 256-bit key, held inline: a read looks one up for every row it opens, and a key in
    /// an array of its own was an allocation (and a pointer to follow) each time.
    public struct Key: Equatable, Sendable {
        let bytes: SIMD32<UInt8>

        /// Nil unless `bytes` holds exactly `AESGCM.keySize` bytes.
        public init?(_ bytes: some Collection<UInt8>) {
            guard bytes.count == AESGCM.keySize else { return nil }
            var value = SIMD32<UInt8>()
            for (index, byte) in bytes.enumerated() { value[index] = byte }
            self.bytes = value
        }

        /// The key from 32 bytes in memory.
        public init(loading pointer: UnsafeRawPointer) {
            bytes = pointer.loadUnaligned(as: SIMD32<UInt8>.self)
        }

        public var byteArray: [UInt8] { withUnsafeBytes(of: bytes) { Array($0) } }
    }

    /// The name of the tag parameter, as the C string libcrypto looks parameters up by (made
    /// once: a Swift string passed where C wants one is copied on every call).
    nonisolated(unsafe) static let tagParameter: UnsafePointer<CChar> = UnsafePointer(strdup(OSSL_CIPHER_PARAM_AEAD_TAG)!)

    /// The cipher fetched once (see `Crypto.sha256Digest` for why).
    nonisolated(unsafe) static let cipher: OpaquePointer = {
        guard let cipher = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil) else { preconditionFailure("AES-256-GCM is not available in libcrypto") }
        return cipher
    }()

    /// Seals `plaintext` under `key`, binding `associatedData` (which is not stored).
    public static func seal(_ plaintext: [UInt8], key: [UInt8], associatedData: [UInt8]) throws -> [UInt8] {
        try seal(plaintext, key: key, nonce: try Crypto.randomBytes(nonceSize), associatedData: associatedData)
    }

    /// Sealing with a chosen nonce: for known-answer tests only. A nonce must never repeat under a key.
    public static func seal(_ plaintext: [UInt8], key: [UInt8], nonce: [UInt8], associatedData: [UInt8]) throws -> [UInt8] {
        try AESGCMContext().seal(plaintext, key: checkedKey(key), nonce: nonce, associatedData: associatedData)
    }

    /// The plaintext of a sealed box, or `AuthenticationFailure` when the box, the key or the
    /// associated data is not the one it was sealed with.
    public static func open(_ box: [UInt8], key: [UInt8], associatedData: [UInt8]) throws -> [UInt8] {
        try AESGCMContext().open(box[...], key: checkedKey(key), associatedData: associatedData)
    }

    private static func checkedKey(_ key: [UInt8]) -> Key {
        guard let key = Key(key) else { preconditionFailure("AES-256-GCM needs a 32-byte key") }
        return key
    }
}

/// A sealed box did not open: wrong key, changed bytes, or other associated data.
public struct AuthenticationFailure: Error, Equatable {
    public init() {}
}

/// libcrypto refused an operation it should not refuse (out of memory, missing algorithm).
public struct CryptoFailure: Error, CustomStringConvertible {
    public var operation: String
    public init(_ operation: String) { self.operation = operation }
    public var description: String { "libcrypto failed: \(operation)" }
}

/// AES-256-GCM contexts kept for many boxes under changing keys (the rows of one transaction
/// belong to many customers, each with a key of its own). A context is made once and re-keyed
/// only when the key differs from the last one it used: making and freeing a libcrypto context
/// for every key costs more than sealing a row. Not for concurrent use: one thread at a time
/// (it may be handed from thread to thread, as a pool of them does).
public final class AESGCMContext: @unchecked Sendable {
    private var encryption: OpaquePointer?
    private var decryption: OpaquePointer?
    /// The key each context holds now (nil: none yet).
    private var encryptionKey: AESGCM.Key?
    private var decryptionKey: AESGCM.Key?

    public init() {}

    deinit {
        EVP_CIPHER_CTX_free(encryption)
        EVP_CIPHER_CTX_free(decryption)
    }

    /// `nonce ‖ ciphertext ‖ tag`; the nonce must never repeat under `key`.
    public func seal(_ plaintext: [UInt8], key: AESGCM.Key, nonce: [UInt8], associatedData: [UInt8]) throws -> [UInt8] {
        precondition(nonce.count == AESGCM.nonceSize, "AES-256-GCM needs a 12-byte nonce")
        let context = try nonce.withUnsafeBufferPointer { try prepared(&encryption, &encryptionKey, key, nonce: $0.baseAddress!, tag: nil) }
        var box = nonce + [UInt8](repeating: 0, count: plaintext.count + AESGCM.tagSize)
        var length: Int32 = 0
        let ok = box.withUnsafeMutableBufferPointer { out -> Bool in
            let body = out.baseAddress! + AESGCM.nonceSize
            guard associatedData.isEmpty || EVP_EncryptUpdate(context, nil, &length, associatedData, Int32(associatedData.count)) == 1,
                plaintext.isEmpty || EVP_EncryptUpdate(context, body, &length, plaintext, Int32(plaintext.count)) == 1,
                EVP_EncryptFinal_ex(context, body + plaintext.count, &length) == 1
            else { return false }
            return EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, Int32(AESGCM.tagSize), body + plaintext.count) == 1
        }
        guard ok else { throw CryptoFailure("AES-256-GCM seal") }
        return box
    }

    /// The plaintext of a box sealed under `key`, or `AuthenticationFailure`.
    public func open(_ box: ArraySlice<UInt8>, key: AESGCM.Key, associatedData: [UInt8]) throws -> [UInt8] {
        try box.withUnsafeBytes { box in try associatedData.withUnsafeBytes { try open(box, key: key, associatedData: $0) } }
    }

    /// The same for a box anywhere in memory (a sealed row where it lies in LMDB's map).
    ///
    /// Every read of a sealed row comes here, each under its customer's own key: the only
    /// allocation is the plaintext's (nonce and tag are handed to libcrypto where they lie in
    /// the box, the tag with the key and nonce in one call, and the key is held inline).
    public func open(_ box: UnsafeRawBufferPointer, key: AESGCM.Key, associatedData: UnsafeRawBufferPointer) throws -> [UInt8] {
        guard box.count >= AESGCM.overhead else { throw AuthenticationFailure() }
        let count = box.count - AESGCM.overhead
        let nonce = box.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let body = nonce + AESGCM.nonceSize
        let context = try prepared(&decryption, &decryptionKey, key, nonce: nonce, tag: body + count)
        var opened = false
        let plaintext = [UInt8](unsafeUninitializedCapacity: count) { out, initialized in
            var length: Int32 = 0
            initialized = count
            let aad = associatedData.baseAddress?.assumingMemoryBound(to: UInt8.self)
            guard associatedData.isEmpty || EVP_DecryptUpdate(context, nil, &length, aad, Int32(associatedData.count)) == 1,
                count == 0 || EVP_DecryptUpdate(context, out.baseAddress, &length, body, Int32(count)) == 1
            else { return }
            // GCM's final step writes no bytes; it compares the tag.
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16) { scratch in
                opened = EVP_DecryptFinal_ex(context, scratch.baseAddress, &length) == 1
            }
        }
        guard opened else { throw AuthenticationFailure() }
        return plaintext
    }

    /// The context, made on first use, set to `key` (its schedule computed again only when the
    /// key changed), to `nonce` and, when opening, to the `tag` to expect: one call.
    private func prepared(
        _ slot: inout OpaquePointer?, _ current: inout AESGCM.Key?, _ key: AESGCM.Key, nonce: UnsafePointer<UInt8>, tag: UnsafePointer<UInt8>?
    ) throws -> OpaquePointer {
        let context: OpaquePointer
        var cipher: OpaquePointer?
        if let slot {
            context = slot
        } else {
            guard let made = EVP_CIPHER_CTX_new() else { throw CryptoFailure("EVP_CIPHER_CTX_new") }
            slot = made
            context = made
            cipher = AESGCM.cipher
            current = nil
        }
        let rekey = current != key
        let ok = withUnsafeBytes(of: key.bytes) { keyBytes in
            let keyPointer = rekey ? keyBytes.baseAddress!.assumingMemoryBound(to: UInt8.self) : nil
            guard let tag else { return EVP_EncryptInit_ex2(context, cipher, keyPointer, nonce, nil) }
            return withUnsafeTemporaryAllocation(of: OSSL_PARAM.self, capacity: 2) { parameters in
                // libcrypto copies the tag; it does not write through this pointer.
                parameters[0] = OSSL_PARAM_construct_octet_string(AESGCM.tagParameter, UnsafeMutableRawPointer(mutating: tag), AESGCM.tagSize)
                parameters[1] = OSSL_PARAM_construct_end()
                return EVP_DecryptInit_ex2(context, cipher, keyPointer, nonce, parameters.baseAddress)
            }
        }
        guard ok == 1 else {
            // The context's state is unknown now: the next call starts from a new one.
            EVP_CIPHER_CTX_free(context)
            slot = nil
            current = nil
            throw CryptoFailure("AES-256-GCM key setup")
        }
        current = key
        return context
    }
}

/// Random nonces drawn from libcrypto's CSPRNG in blocks, so that each seal does not call it.
public struct NonceSource {
    private var buffer: [UInt8] = []
    private var offset = 0

    public init() {}

    public mutating func next() throws -> [UInt8] {
        if offset + AESGCM.nonceSize > buffer.count {
            buffer = try Crypto.randomBytes(AESGCM.nonceSize * 256)
            offset = 0
        }
        defer { offset += AESGCM.nonceSize }
        return Array(buffer[offset..<(offset + AESGCM.nonceSize)])
    }
}
