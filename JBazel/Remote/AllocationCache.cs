using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Google.Protobuf;
using Rbs.JBazel.Configuration;
using Rbs.V1;

namespace Rbs.JBazel.Remote;

/// <summary>
/// The last GetServer answer for one (orchestrator, API key, request), so that a warm command need not ask the
/// orchestrator again: <c>$XDG_CACHE_HOME/jbazel/allocations/&lt;key&gt;.bin</c> (default <c>~/.cache</c>), mode 0600 (it
/// holds the session token). An entry is used only until its session token has less than a minute left (an hour at
/// most), and only after the agent it names has said, on the connection the command then uses, that it is that agent
/// (<see cref="GetServerClient"/>); anything else — a changed request, a newer jbazel, a dead or replaced agent, a
/// refused token — falls back to GetServer, which replaces the entry.
/// </summary>
internal sealed class AllocationCache(string? path, TimeProvider time)
{
    /// <summary>The longest an entry is used, whatever its token says.</summary>
    internal static readonly TimeSpan MaxAge = TimeSpan.FromHours(1);

    /// <summary>What a session token must have left for its entry to be used.</summary>
    private static readonly TimeSpan s_tokenMargin = TimeSpan.FromMinutes(1);

    /// <summary>Where entries would be kept; null when jbazel has no cache directory (no HOME).</summary>
    public string? Path => path;

    public static AllocationCache For(string? xdgCacheHome, string? home, Uri orchestrator, string? apiKey, GetServerRequest request, TimeProvider time)
    {
        var cacheHome = xdgCacheHome is { Length: > 0 } ? xdgCacheHome : home is { Length: > 0 } ? System.IO.Path.Combine(home, ".cache") : null;
        if (cacheHome is null)
        {
            return new AllocationCache(null, time);
        }

        // Everything that could change the answer is in the key: a different orchestrator, user or request is a miss.
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes(orchestrator.AbsoluteUri + "\n" + (apiKey ?? "") + "\n"));
        hash.AppendData(request.ToByteArray());
        var key = Convert.ToHexStringLower(hash.GetHashAndReset())[..32];
        return new AllocationCache(System.IO.Path.Combine(cacheHome, "jbazel", "allocations", key + ".bin"), time);
    }

    /// <summary>The cached answer while it is fresh; null when there is none, it expired or it cannot be read.</summary>
    public GetServerResponse? TryLoad()
    {
        if (path is null)
        {
            return null;
        }

        try
        {
            var bytes = File.ReadAllBytes(path);
            if (bytes.Length < sizeof(long))
            {
                return null;
            }

            var usableUntil = DateTimeOffset.FromUnixTimeMilliseconds(BinaryPrimitives.ReadInt64LittleEndian(bytes));
            return time.GetUtcNow() < usableUntil ? GetServerResponse.Parser.ParseFrom(bytes.AsSpan(sizeof(long))) : null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or InvalidProtocolBufferException or ArgumentOutOfRangeException)
        {
            // No entry, or one that is unreadable: GetServer decides, as without a cache.
            return null;
        }
    }

    /// <summary>Keeps <paramref name="response"/> for the next command; a cache that cannot be written is no cache.</summary>
    public void Save(GetServerResponse response)
    {
        if (path is null)
        {
            return;
        }

        var now = time.GetUtcNow();
        var usableUntil = now + MaxAge;
        if (TokenExpiry(response.SessionToken) is { } expires)
        {
            usableUntil = expires - s_tokenMargin < usableUntil ? expires - s_tokenMargin : usableUntil;
        }

        if (usableUntil <= now)
        {
            Forget();
            return;
        }

        var bytes = new byte[sizeof(long) + response.CalculateSize()];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, usableUntil.ToUnixTimeMilliseconds());
        response.WriteTo(bytes.AsSpan(sizeof(long)));
        CacheFiles.TryWriteAtomically(path, bytes);
    }

    /// <summary>The entry named an agent that is gone or refused us: the next command asks GetServer.</summary>
    public void Forget()
    {
        if (path is not null)
        {
            CacheFiles.TryDelete(path);
        }
    }

    /// <summary>The <c>exp</c> claim of a JWT, read without checking it (the servers check it; this only avoids using a stale one).</summary>
    internal static DateTimeOffset? TokenExpiry(string? token)
    {
        var parts = token?.Split('.');
        if (parts is not { Length: 3 })
        {
            return null;
        }

        try
        {
            var payload = parts[1].Replace('-', '+').Replace('_', '/');
            payload = payload.PadRight(payload.Length + ((4 - (payload.Length % 4)) % 4), '=');
            using var claims = JsonDocument.Parse(Convert.FromBase64String(payload));
            return claims.RootElement.TryGetProperty("exp", out var exp) && exp.TryGetInt64(out var seconds)
                ? DateTimeOffset.FromUnixTimeSeconds(seconds)
                : null;
        }
        catch (Exception ex) when (ex is FormatException or JsonException or ArgumentOutOfRangeException)
        {
            return null;
        }
    }
}
