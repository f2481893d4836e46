import CCrypto

/// AES-256-GCM from libcrypto (NIST SP 800-38D): authenticated encryption of values at rest.
/// A sealed box is `nonce (12) ‖ ciphertext ‖ tag (16)`; the nonce is random for every seal,
/// which is safe for up to 2³² seals under one key (each key here seals one customer's rows).
public enum AESGCM {
    public static let keySize = 32
    public static let nonceSize = 12
    public static let tagSize = 16
    /// What a sealed box adds to its plaintext.
    public static let overhead = nonceSize + tagSize

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
        try AESGCMContext().seal(plaintext, key: key, nonce: nonce, associatedData: associatedData)
    }

    /// The plaintext of a sealed box, or `AuthenticationFailure` when the box, the key or the
    /// associated data is not the one it was sealed with.
    public static func open(_ box: [UInt8], key: [UInt8], associatedData: [UInt8]) throws -> [UInt8] {
        try AESGCMContext().open(box[...], key: key, associatedData: associatedData)
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
    /// The key each context holds now (empty: none yet).
    private var encryptionKey: [UInt8] = []
    private var decryptionKey: [UInt8] = []

    public init() {}

    deinit {
        EVP_CIPHER_CTX_free(encryption)
        EVP_CIPHER_CTX_free(decryption)
    }

    /// `nonce ‖ ciphertext ‖ tag`; the nonce must never repeat under `key`.
    public func seal(_ plaintext: [UInt8], key: [UInt8], nonce: [UInt8], associatedData: [UInt8]) throws -> [UInt8] {
        precondition(nonce.count == AESGCM.nonceSize, "AES-256-GCM needs a 12-byte nonce")
        let context = try prepared(&encryption, &encryptionKey, key, nonce: nonce, encrypting: true)
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
    public func open(_ box: ArraySlice<UInt8>, key: [UInt8], associatedData: [UInt8]) throws -> [UInt8] {
        guard box.count >= AESGCM.overhead else { throw AuthenticationFailure() }
        let count = box.count - AESGCM.overhead
        var plaintext = [UInt8](repeating: 0, count: count)
        var tag = Array(box.suffix(AESGCM.tagSize))
        var length: Int32 = 0
        let ok = try box.withUnsafeBufferPointer { input -> Bool in
            let nonce = UnsafeBufferPointer(rebasing: input[0..<AESGCM.nonceSize])
            let context = try prepared(&decryption, &decryptionKey, key, nonce: Array(nonce), encrypting: false)
            return plaintext.withUnsafeMutableBufferPointer { out -> Bool in
                let body = input.baseAddress! + AESGCM.nonceSize
                guard associatedData.isEmpty || EVP_DecryptUpdate(context, nil, &length, associatedData, Int32(associatedData.count)) == 1,
                    count == 0 || EVP_DecryptUpdate(context, out.baseAddress, &length, body, Int32(count)) == 1,
                    EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, Int32(AESGCM.tagSize), &tag) == 1
                else { return false }
                var scratch = [UInt8](repeating: 0, count: 16)
                return EVP_DecryptFinal_ex(context, &scratch, &length) == 1
            }
        }
        guard ok else { throw AuthenticationFailure() }
        return plaintext
    }

    /// The context, made on first use, set to `key` (its schedule computed again only when the
    /// key changed) and to `nonce`, in one call.
    private func prepared(_ slot: inout OpaquePointer?, _ current: inout [UInt8], _ key: [UInt8], nonce: [UInt8], encrypting: Bool) throws
        -> OpaquePointer
    {
        precondition(key.count == AESGCM.keySize, "AES-256-GCM needs a 32-byte key")
        let context: OpaquePointer
        var cipher: OpaquePointer?
        if let slot {
            context = slot
        } else {
            guard let made = EVP_CIPHER_CTX_new() else { throw CryptoFailure("EVP_CIPHER_CTX_new") }
            slot = made
            context = made
            cipher = AESGCM.cipher
            current = []
        }
        let rekey = current != key
        let ok = key.withUnsafeBufferPointer { keyBytes in
            let keyPointer = rekey ? keyBytes.baseAddress : nil
            return encrypting
                ? EVP_EncryptInit_ex2(context, cipher, keyPointer, nonce, nil) : EVP_DecryptInit_ex2(context, cipher, keyPointer, nonce, nil)
        }
        guard ok == 1 else {
            // The context's state is unknown now: the next call starts from a new one.
            EVP_CIPHER_CTX_free(context)
            slot = nil
            current = []
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
