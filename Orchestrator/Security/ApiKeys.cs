using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Hosting;

namespace Rbs.Orchestrator.Security;

/// <summary>One client credential: <c>Orchestrator:ApiKeys:N:User</c> / <c>Orchestrator:ApiKeys:N:Key</c>.</summary>
internal sealed class ApiKeyEntry
{
    /// <summary>The user the key authenticates as (agents are per user and repository). Default: none; required.</summary>
    public string User { get; set; } = "";

    /// <summary>The secret clients send as <c>authorization: Bearer &lt;key&gt;</c> (jbazel <c>--rbs_api_key</c>). Default: none; required.</summary>
    public string Key { get; set; } = "";
}

/// <summary>
/// Client authentication for GetServer: the configured API keys (<c>Orchestrator:ApiKeys</c> plus
/// <c>--api-keys-file</c>), compared in constant time over SHA-256 digests so neither a key's content nor its length
/// leaks through timing; every configured key is compared on every call. With no keys, local mode has the single
/// implicit user "local" and any other mode refuses clients.
/// </summary>
internal sealed partial class ApiKeyAuthenticator
{
    private readonly (string User, byte[] Digest)[] _keys;
    private readonly bool _localMode;

    public ApiKeyAuthenticator(IOptions<OrchestratorOptions> options)
    {
        _localMode = options.Value.LocalMode;
        _keys = [.. Load(options.Value).Select(k => (k.User, SHA256.HashData(Encoding.UTF8.GetBytes(k.Key))))];
    }

    /// <summary>Number of configured keys (for the start-up line and tests).</summary>
    public int Count => _keys.Length;

    /// <summary>The caller's user id, or an <see cref="RpcException"/> with status Unauthenticated.</summary>
    public string Authenticate(Metadata requestHeaders)
    {
        var presented = BearerToken(requestHeaders);
        if (_keys.Length == 0)
        {
            if (_localMode)
            {
                return OrchestratorOptions.LocalUser;
            }

            throw new RpcException(new Status(StatusCode.Unauthenticated,
                "no API keys configured: this orchestrator accepts no clients until Orchestrator:ApiKeys or --api-keys-file is set (or run it with --local-mode for a single local user)"));
        }

        if (presented is null)
        {
            throw new RpcException(new Status(StatusCode.Unauthenticated,
                "this orchestrator requires an API key: pass --rbs_api_key or set RBS_API_KEY"));
        }

        var digest = SHA256.HashData(Encoding.UTF8.GetBytes(presented));
        string? user = null;
        foreach (var key in _keys)
        {
            // No early exit: the time taken does not depend on which key (if any) matched.
            if (CryptographicOperations.FixedTimeEquals(digest, key.Digest))
            {
                user ??= key.User;
            }
        }

        return user ?? throw new RpcException(new Status(StatusCode.Unauthenticated, "the API key was not accepted"));
    }

    /// <summary>The keys from configuration and the keys file; throws <see cref="FormatException"/>/<see cref="IOException"/> naming what to fix.</summary>
    public static List<ApiKeyEntry> Load(OrchestratorOptions options)
    {
        var keys = new List<ApiKeyEntry>();
        for (var i = 0; i < options.ApiKeys.Count; i++)
        {
            var entry = options.ApiKeys[i];
            Check(entry.User, entry.Key, $"Orchestrator:ApiKeys:{i}");
            keys.Add(entry);
        }

        if (!string.IsNullOrWhiteSpace(options.ApiKeysFile))
        {
            var lineNumber = 0;
            foreach (var raw in File.ReadLines(options.ApiKeysFile))
            {
                lineNumber++;
                var line = raw.Trim();
                if (line.Length == 0 || line.StartsWith('#'))
                {
                    continue;
                }

                var colon = line.IndexOf(':', StringComparison.Ordinal);
                if (colon <= 0)
                {
                    throw new FormatException($"--api-keys-file {options.ApiKeysFile} line {lineNumber}: expected 'user:key'");
                }

                var entry = new ApiKeyEntry { User = line[..colon].Trim(), Key = line[(colon + 1)..].Trim() };
                Check(entry.User, entry.Key, $"--api-keys-file {options.ApiKeysFile} line {lineNumber}");
                keys.Add(entry);
            }
        }

        return keys;
    }

    private static void Check(string user, string key, string where)
    {
        if (string.IsNullOrWhiteSpace(user) || !UserPattern().IsMatch(user))
        {
            throw new FormatException($"{where}: user '{user}' must be 1..64 characters of [A-Za-z0-9._@-]");
        }

        if (string.IsNullOrWhiteSpace(key))
        {
            throw new FormatException($"{where}: the key for user '{user}' is empty");
        }
    }

    private static string? BearerToken(Metadata headers)
    {
        var value = headers.GetValue("authorization");
        const string scheme = "Bearer ";
        if (value is null || !value.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
        {
            return null;
        }

        var token = value[scheme.Length..].Trim();
        return token.Length == 0 ? null : token;
    }

    [GeneratedRegex("^[A-Za-z0-9._@-]{1,64}$")]
    private static partial Regex UserPattern();
}
