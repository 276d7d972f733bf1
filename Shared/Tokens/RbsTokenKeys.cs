using System.Buffers.Text;
using System.Security.Cryptography;
using Microsoft.IdentityModel.Tokens;

namespace Rbs.Shared.Tokens;

/// <summary>One HMAC-SHA256 key and its key id (<c>kid</c>): derived from the key, so a key is configured by its bytes alone.</summary>
internal sealed class RbsTokenKey
{
    /// <summary>Minimum key length: HMAC-SHA256's block of security.</summary>
    public const int MinimumBytes = 32;

    public RbsTokenKey(ReadOnlySpan<byte> key)
    {
        if (key.Length < MinimumBytes)
        {
            throw new ArgumentException($"The token key must be at least {MinimumBytes} bytes; it is {key.Length}.", nameof(key));
        }

        // A hash of a secret of >= 256 bits says nothing about the secret; 96 bits tell keys apart.
        Id = Base64Url.EncodeToString(SHA256.HashData(key).AsSpan(0, 12));
        SecurityKey = new SymmetricSecurityKey(key.ToArray()) { KeyId = Id };
        SigningCredentials = new SigningCredentials(SecurityKey, SecurityAlgorithms.HmacSha256);
    }

    public string Id { get; }

    public SymmetricSecurityKey SecurityKey { get; }

    public SigningCredentials SigningCredentials { get; }
}

/// <summary>
/// The keys of one host: <see cref="Current"/> signs every token it mints; tokens signed with any of <see cref="Accepted"/>
/// (the current key and the extra keys of a rotation) are valid. A rotation without downtime: (1) add the new key as an
/// extra accepted key on every host; (2) make it the current key everywhere, the old one an extra accepted key; (3) once
/// the tokens signed with the old key have expired (the longest token lifetime), drop it.
/// </summary>
internal sealed class RbsTokenKeyRing
{
    public RbsTokenKeyRing(RbsTokenKey current, IEnumerable<RbsTokenKey>? extra = null)
    {
        Current = current;
        var accepted = new List<RbsTokenKey> { current };
        foreach (var key in extra ?? [])
        {
            if (!accepted.Exists(k => k.Id == key.Id))
            {
                accepted.Add(key);
            }
        }

        Accepted = accepted;
        ValidationKeys = accepted.Select(k => (SecurityKey)k.SecurityKey).ToArray();
    }

    public RbsTokenKey Current { get; }

    public IReadOnlyList<RbsTokenKey> Accepted { get; }

    public IReadOnlyList<SecurityKey> ValidationKeys { get; }

    /// <summary>One key, nothing else accepted (local mode, tests).</summary>
    public static RbsTokenKeyRing Single(ReadOnlySpan<byte> key) => new(new RbsTokenKey(key));

    /// <summary>
    /// The configured ring: the current key inline (base64) or from a file, and the extra accepted keys inline and/or
    /// from a file (base64 keys separated by whitespace or commas; <c>#</c> starts a comment line). Throws
    /// <see cref="FormatException"/> or <see cref="IOException"/> with a message naming the bad part.
    /// </summary>
    public static RbsTokenKeyRing Load(string? key, string? keyFile, string? acceptedKeys, string? acceptedKeysFile)
    {
        var current = !string.IsNullOrWhiteSpace(key)
            ? DecodeKey(key)
            : ReadKeyFile(keyFile ?? throw new FormatException("no token key configured"));
        var extra = new List<RbsTokenKey>();
        if (!string.IsNullOrWhiteSpace(acceptedKeys))
        {
            extra.AddRange(DecodeKeyList(acceptedKeys).Select(k => new RbsTokenKey(k)));
        }

        if (!string.IsNullOrWhiteSpace(acceptedKeysFile))
        {
            extra.AddRange(DecodeKeyList(File.ReadAllText(acceptedKeysFile)).Select(k => new RbsTokenKey(k)));
        }

        return new RbsTokenKeyRing(new RbsTokenKey(current), extra);
    }

    /// <summary>Decodes a base64 key (as stored in config or a secret file); throws a clear error otherwise.</summary>
    public static byte[] DecodeKey(string base64Key)
    {
        byte[] key;
        try
        {
            key = Convert.FromBase64String(base64Key.Trim());
        }
        catch (FormatException)
        {
            throw new FormatException("The token key is not valid base64 (generate one with: head -c 32 /dev/urandom | base64).");
        }

        if (key.Length < RbsTokenKey.MinimumBytes)
        {
            throw new FormatException($"The token key must decode to at least {RbsTokenKey.MinimumBytes} bytes; it has {key.Length}.");
        }

        return key;
    }

    /// <summary>Reads a base64 key from a file (a mounted secret).</summary>
    public static byte[] ReadKeyFile(string path) => DecodeKey(File.ReadAllText(path));

    /// <summary>Base64 keys separated by whitespace or commas; lines starting with <c>#</c> are comments.</summary>
    public static IReadOnlyList<byte[]> DecodeKeyList(string text) =>
        text.Split('\n')
            .Where(line => !line.TrimStart().StartsWith('#'))
            .SelectMany(line => line.Split([' ', '\t', '\r', ','], StringSplitOptions.RemoveEmptyEntries))
            .Select(DecodeKey)
            .ToArray();

    /// <summary>Creates a random base64 key, e.g. for local mode.</summary>
    public static string GenerateKey() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(RbsTokenKey.MinimumBytes));
}
