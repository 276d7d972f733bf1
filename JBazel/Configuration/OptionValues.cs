using System.Globalization;

namespace Rbs.JBazel.Configuration;

/// <summary>Parsing of <c>--rbs_*</c> values; the same rules apply on the command line, in the environment and in rc files.</summary>
internal static class OptionValues
{
    public static bool TryParseOrchestrator(string text, out Uri uri, out string error)
    {
        error = "";
        if (Uri.TryCreate(text, UriKind.Absolute, out var parsed)
            && (parsed.Scheme == Uri.UriSchemeHttp || parsed.Scheme == Uri.UriSchemeHttps)
            && parsed.Host.Length > 0)
        {
            uri = parsed;
            return true;
        }

        uri = RbsSettings.DefaultOrchestrator;
        error = $"'{text}' is not an orchestrator address; expected http://host:port or https://host[:port]";
        return false;
    }

    public static bool TryParseConnect(string text, out ConnectPreference value, out string error)
    {
        error = "";
        switch (text)
        {
            case "auto":
                value = ConnectPreference.Auto;
                return true;
            case "direct":
                value = ConnectPreference.Direct;
                return true;
            case "tunnel":
                value = ConnectPreference.Tunnel;
                return true;
            default:
                value = default;
                error = $"'{text}' is not a connect mode; expected direct, tunnel or auto";
                return false;
        }
    }

    public static bool TryParseStatus(string text, out StatusMode value, out string error)
    {
        error = "";
        switch (text)
        {
            case "auto":
                value = StatusMode.Auto;
                return true;
            case "always":
                value = StatusMode.Always;
                return true;
            case "never":
                value = StatusMode.Never;
                return true;
            default:
                value = default;
                error = $"'{text}' is not a status mode; expected auto, always or never";
                return false;
        }
    }

    /// <summary>A switch: no value or <c>true/yes/1</c> is on, <c>false/no/0</c> off (so <c>RBS_X=1</c> works).</summary>
    public static bool TryParseSwitch(string text, out bool value, out string error)
    {
        error = "";
        switch (text.ToLowerInvariant())
        {
            case "" or "true" or "yes" or "1":
                value = true;
                return true;
            case "false" or "no" or "0":
                value = false;
                return true;
            default:
                value = false;
                error = $"'{text}' is not a switch value; expected true or false (or 1/0, yes/no)";
                return false;
        }
    }

    /// <summary>Accepts <c>120</c> (seconds), <c>120s</c>, <c>500ms</c>, <c>2m</c>, <c>1h</c> or <c>hh:mm:ss</c>; must be positive.</summary>
    public static bool TryParseTimeout(string text, out TimeSpan value, out string error)
    {
        error = "";
        value = default;
        var parsed = text switch
        {
            _ when text.EndsWith("ms", StringComparison.Ordinal) => Scale(text[..^2], TimeSpan.FromMilliseconds),
            _ when text.EndsWith('s') => Scale(text[..^1], TimeSpan.FromSeconds),
            _ when text.EndsWith('m') => Scale(text[..^1], TimeSpan.FromMinutes),
            _ when text.EndsWith('h') => Scale(text[..^1], TimeSpan.FromHours),
            _ when text.Contains(':', StringComparison.Ordinal) =>
                TimeSpan.TryParse(text, CultureInfo.InvariantCulture, out var span) ? span : (TimeSpan?)null,
            _ => Scale(text, TimeSpan.FromSeconds),
        };

        if (parsed is { } positive && positive > TimeSpan.Zero)
        {
            value = positive;
            return true;
        }

        error = $"'{text}' is not a positive duration; use e.g. 120s, 500ms, 2m or 00:02:00";
        return false;

        static TimeSpan? Scale(string number, Func<double, TimeSpan> unit) =>
            double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var n)
                && double.IsFinite(n) && n > 0 && n < 1e9
                ? unit(n)
                : null;
    }

    /// <summary>Formats a duration the way <see cref="TryParseTimeout"/> reads it back.</summary>
    public static string FormatDuration(TimeSpan value) =>
        value.TotalSeconds == Math.Floor(value.TotalSeconds)
            ? $"{value.TotalSeconds.ToString(CultureInfo.InvariantCulture)}s"
            : $"{value.TotalMilliseconds.ToString(CultureInfo.InvariantCulture)}ms";
}
