using System.Globalization;

namespace Rbs.Shared.Text;

/// <summary>
/// A byte count for people: below 1 KiB in bytes, else in the largest binary unit (KiB, MiB, GiB) it reaches.
/// jbazel's status lines and the agent's sync errors all use it; each keeps the spelling it has always printed
/// (the e2e scripts and users read them), hence the two knobs instead of one fixed format.
/// </summary>
internal static class ByteSize
{
    /// <param name="bytes">The count.</param>
    /// <param name="fraction">The .NET format of the scaled number: <c>"0.#"</c> ("1.5 KiB", "2 MiB") or <c>"0.0"</c> ("2.0 MiB").</param>
    /// <param name="bytesUnit">The unit below 1 KiB: <c>"B"</c> ("512 B") or <c>"bytes"</c> ("512 bytes").</param>
    public static string Format(long bytes, string fraction = "0.#", string bytesUnit = "B") => bytes switch
    {
        < 1L << 10 => bytes.ToString(CultureInfo.InvariantCulture) + " " + bytesUnit,
        < 1L << 20 => Scaled(bytes, 1L << 10, fraction, "KiB"),
        < 1L << 30 => Scaled(bytes, 1L << 20, fraction, "MiB"),
        _ => Scaled(bytes, 1L << 30, fraction, "GiB"),
    };

    private static string Scaled(long bytes, long unit, string fraction, string name) =>
        ((double)bytes / unit).ToString(fraction, CultureInfo.InvariantCulture) + " " + name;
}
