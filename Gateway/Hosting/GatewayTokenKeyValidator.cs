using Microsoft.Extensions.Options;
using Rbs.Shared.Tokens;

namespace Rbs.Gateway.Hosting;

/// <summary>
/// The token key must be usable at start: a key file that is missing, unreadable or not a base64 key of the right size
/// would otherwise surface only with the first agent or client, as a failed request instead of a failed start.
/// </summary>
internal sealed class GatewayTokenKeyValidator : IValidateOptions<GatewayOptions>
{
    public ValidateOptionsResult Validate(string? name, GatewayOptions options)
    {
        try
        {
            if (!string.IsNullOrWhiteSpace(options.TokenKey))
            {
                RbsTokenKeyRing.DecodeKey(options.TokenKey);
            }
            else if (!string.IsNullOrWhiteSpace(options.TokenKeyFile))
            {
                RbsTokenKeyRing.ReadKeyFile(options.TokenKeyFile);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            var source = string.IsNullOrWhiteSpace(options.TokenKey) ? $"--token-key-file '{options.TokenKeyFile}'" : "Gateway:TokenKey";
            return ValidateOptionsResult.Fail($"{source} is not a usable token key: {e.Message.TrimEnd('.')}.");
        }

        try
        {
            RbsTokenKeyRing.Load(RbsTokenKeyRing.GenerateKey(), null, options.AcceptedTokenKeys, options.AcceptedTokenKeysFile);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return ValidateOptionsResult.Fail($"the accepted token keys (--accepted-token-keys-file / Gateway:AcceptedTokenKeys) are unusable: {e.Message.TrimEnd('.')}.");
        }

        return options.TokenClockSkew < TimeSpan.Zero
            ? ValidateOptionsResult.Fail("Gateway:TokenClockSkew cannot be negative.")
            : ValidateOptionsResult.Success;
    }
}
